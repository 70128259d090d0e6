"""Every ORM model, imported once so the metadata (Alembic, doctor, tests) sees all tables."""

from allting.ai.models import AiModel, Budget, ModelProvider, UsageRecord
from allting.assistants.models import Assistant, AssistantApiKey, AssistantPromptVersion
from allting.audit.models import AuditLog
from allting.auth.models import AuthSession, TenantFederation, UserIdentity
from allting.conversations.models import Citation, Conversation, Message
from allting.files.models import File
from allting.jobs.models import Job
from allting.knowledge.models import Chunk, ChunkVector, Collection, CrawlRun, Document, Website
from allting.platform.db import Base
from allting.spaces.models import Space, SpaceMember
from allting.tenants.models import Tenant
from allting.users.models import ApiKey, Role, User, UserGroup, UserGroupMember

__all__ = [
    "AiModel",
    "ApiKey",
    "Assistant",
    "AssistantApiKey",
    "AssistantPromptVersion",
    "AuditLog",
    "AuthSession",
    "Base",
    "Budget",
    "Chunk",
    "ChunkVector",
    "Citation",
    "Collection",
    "Conversation",
    "CrawlRun",
    "Document",
    "File",
    "Job",
    "Message",
    "ModelProvider",
    "Role",
    "Space",
    "SpaceMember",
    "Tenant",
    "TenantFederation",
    "UsageRecord",
    "User",
    "UserGroup",
    "UserGroupMember",
    "UserIdentity",
    "Website",
]
