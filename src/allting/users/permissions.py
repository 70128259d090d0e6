"""Tenant-wide permissions and the predefined roles every tenant starts with."""

from __future__ import annotations

PERMISSIONS: dict[str, str] = {
    "admin": "Manage users, groups, roles and tenant settings",
    "ai": "Manage AI providers, models, credentials and budgets",
    "audit": "Read and export the audit log",
    "spaces": "Create shared spaces",
    "assistants": "Create and edit assistants",
    "collections": "Create collections and upload documents",
    "websites": "Add websites to crawl",
}

MEMBER_PERMISSIONS = ("spaces", "assistants", "collections", "websites")

PREDEFINED_ROLES: dict[str, dict] = {
    "owner": {
        "name": "Owner",
        "description": "Everything, including managing owners",
        "permissions": sorted(PERMISSIONS),
    },
    "admin": {
        "name": "Admin",
        "description": "Administers the organisation",
        "permissions": sorted(PERMISSIONS),
    },
    "member": {
        "name": "Member",
        "description": "Uses assistants and builds in spaces",
        "permissions": list(MEMBER_PERMISSIONS),
    },
}
# Permissions beyond a member's: only someone who holds one (or an owner) may hand it out.
PRIVILEGED_PERMISSIONS = frozenset(PERMISSIONS) - frozenset(MEMBER_PERMISSIONS)
DEFAULT_ROLE_KEY = "member"
OWNER_ROLE_KEY = "owner"


def unknown_permissions(permissions: list[str]) -> list[str]:
    return [permission for permission in permissions if permission not in PERMISSIONS]
