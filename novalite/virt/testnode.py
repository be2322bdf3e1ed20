"""Simulated compute hosts: node files for libvirt's ``test`` driver.

libvirt's test driver, opened as ``test:///<absolute path>``, reads a ``<node>``
document describing a fake host (``/node/cpu/{nodes,sockets,cores,threads,active,
mhz,model}`` and ``/node/memory`` in KiB) plus optional predefined domains,
networks and pools.  We write a host with one NUMA cell, one socket, ``vcpus``
cores, no predefined objects, and a ``<novalite:host name=...>`` element the
test driver ignores but which names the simulated host (the test driver's own
``getHostname()`` reports the real machine's name).

Each ``virConnectOpen`` of such a URI builds a fresh, private in-memory host:
state is per connection, not per file.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

__all__ = ["TESTNODE_NS", "read_test_node_name", "node_file_from_uri", "write_test_node"]

TESTNODE_NS = "urn:x-novalite:testnode"


def write_test_node(path: Path, name: str, vcpus: int, memory_mb: int) -> str:
    """Write a test-driver node file for host ``name`` and return its ``test:///`` URI.

    ``path`` is the file to write; if it is an existing directory, ``<name>.xml``
    is written inside it.
    """
    if vcpus < 1 or memory_mb < 1:
        raise ValueError("a simulated host needs at least one CPU and 1 MiB of memory")
    path = Path(path)
    if path.is_dir():
        path = path / f"{name}.xml"
    path = path.resolve()

    node = etree.Element("node", nsmap={"novalite": TESTNODE_NS})
    etree.SubElement(node, f"{{{TESTNODE_NS}}}host", name=name)
    cpu = etree.SubElement(node, "cpu")
    for tag, value in (("mhz", "2400"), ("model", "x86_64"), ("nodes", "1"),
                       ("sockets", "1"), ("cores", str(vcpus)), ("threads", "1"),
                       ("active", str(vcpus))):
        etree.SubElement(cpu, tag).text = value
    etree.SubElement(node, "memory").text = str(memory_mb * 1024)  # KiB

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(etree.tostring(node, pretty_print=True, xml_declaration=True,
                                   encoding="UTF-8"))
    tmp.replace(path)  # atomic: a concurrent opener never sees half a file
    return f"test://{path}"


def node_file_from_uri(uri: str) -> Path | None:
    """The node file behind a ``test:///<path>`` URI; None for other URIs and test:///default."""
    if not uri.startswith("test:///") or uri == "test:///default":
        return None
    return Path(uri[len("test://"):].split("?", 1)[0])


def read_test_node_name(uri: str) -> str | None:
    """The simulated host name stored by :func:`write_test_node`, or None if there is none."""
    path = node_file_from_uri(uri)
    if path is None or not path.is_file():
        return None
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    host = etree.parse(str(path), parser).getroot().find(f"{{{TESTNODE_NS}}}host")
    return None if host is None else host.get("name")
