"""Images: where image data lives on disk and the locally built test guest."""
