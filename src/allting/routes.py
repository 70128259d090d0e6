"""Every router of the application, in one explicit list."""

from fastapi import APIRouter

from allting import health
from allting.ai import api as ai_api
from allting.assistants import api as assistants_api
from allting.audit import api as audit_api
from allting.auth import api as auth_api
from allting.auth import sso_api
from allting.conversations import api as conversations_api
from allting.files import api as files_api
from allting.jobs import api as jobs_api
from allting.knowledge import api as knowledge_api
from allting.spaces import api as spaces_api
from allting.sysadmin import api as sysadmin_api
from allting.users import api as users_api

api_router = APIRouter(prefix="/api/v1")
for module in (
    auth_api,
    users_api,
    audit_api,
    jobs_api,
    ai_api,
    spaces_api,
    assistants_api,
    conversations_api,
    files_api,
    knowledge_api,
    sysadmin_api,
):
    api_router.include_router(module.router)
api_router.include_router(ai_api.sysadmin_router)
api_router.include_router(sso_api.router)
api_router.include_router(sso_api.sysadmin_router)

health_router = APIRouter(prefix="/api")
health_router.include_router(health.router)
