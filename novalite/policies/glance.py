"""Glance 33 (2025.2)'s default rules (glance/policies/*.py) for the routes novalite serves.

Names and new-default check strings as upstream registers them; the
descriptions are the API operations each rule guards.
"""

from __future__ import annotations

from novalite.policies import RuleDefault

_r = RuleDefault

# fmt: off
DEFAULT_RULES: tuple[RuleDefault, ...] = (
    _r("default",
       "",
       "Fallback for rules the policy file names but the service does not register"),
    _r("context_is_admin",
       "role:admin",
       "Who counts as an administrator"),
    _r("service_api",
       "role:service or role:admin",
       "Another OpenStack service calling"),
    _r("add_image",
       "rule:context_is_admin or (role:member and project_id:%(project_id)s and project_id:%(owner)s)",
       "POST /v2/images"),
    _r("delete_image",
       "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
       "DELETE /v2/images/{image_id}"),
    _r("get_image",
       "rule:context_is_admin or (role:reader and (project_id:%(project_id)s or project_id:%(member_id)s or 'community':%(visibility)s or 'public':%(visibility)s or 'shared':%(visibility)s))",
       "GET /v2/images/{image_id}"),
    _r("get_images",
       "rule:context_is_admin or (role:reader and project_id:%(project_id)s)",
       "GET /v2/images"),
    _r("modify_image",
       "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
       "PATCH /v2/images/{image_id}"),
    _r("publicize_image",
       "rule:context_is_admin",
       "PATCH /v2/images/{image_id}"),
    _r("communitize_image",
       "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
       "PATCH /v2/images/{image_id}"),
    _r("download_image",
       "rule:context_is_admin or (role:member and (project_id:%(project_id)s or project_id:%(member_id)s or 'community':%(visibility)s or 'public':%(visibility)s or 'shared':%(visibility)s))",
       "GET /v2/images/{image_id}/file"),
    _r("upload_image",
       "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
       "PUT /v2/images/{image_id}/file"),
    _r("add_member",
       "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
       "POST /v2/images/{image_id}/members"),
    _r("delete_member",
       "rule:context_is_admin or (role:member and project_id:%(project_id)s)",
       "DELETE /v2/images/{image_id}/members/{member_id}"),
    _r("get_member",
       "rule:context_is_admin or role:reader and (project_id:%(project_id)s or project_id:%(member_id)s)",
       "GET /v2/images/{image_id}/members/{member_id}"),
    _r("get_members",
       "rule:context_is_admin or role:reader and (project_id:%(project_id)s or project_id:%(member_id)s)",
       "GET /v2/images/{image_id}/members"),
    _r("modify_member",
       "rule:context_is_admin or (role:member and project_id:%(member_id)s)",
       "PUT /v2/images/{image_id}/members/{member_id}"),
)
# fmt: on
