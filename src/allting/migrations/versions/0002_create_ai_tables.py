"""create ai tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 19:12:03.576792
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from allting.platform.tenancy import row_level_security_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.Uuid(), nullable=True),
        sa.Column("monthly_tokens", sa.BigInteger(), nullable=True),
        sa.Column("monthly_cost", sa.Numeric(precision=14, scale=4), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_budgets_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
    )
    op.create_index(op.f("ix_budgets_tenant_id"), "budgets", ["tenant_id"], unique=False)
    op.create_index(
        "uq_budgets_scope",
        "budgets",
        ["tenant_id", "scope", sa.literal_column("coalesce(scope_id::text, '')")],
        unique=True,
    )
    op.create_table(
        "model_providers",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("provider_type", sa.String(length=32), nullable=False),
        sa.Column("endpoint", sa.String(length=500), nullable=True),
        sa.Column("api_version", sa.String(length=50), nullable=True),
        sa.Column("deployment_name", sa.String(length=200), nullable=True),
        sa.Column("encrypted_api_key", sa.Text(), nullable=True),
        sa.Column("key_last4", sa.String(length=4), nullable=True),
        sa.Column("key_set_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_model_providers_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_providers")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_model_providers_tenant_id_name")),
    )
    op.create_index(op.f("ix_model_providers_tenant_id"), "model_providers", ["tenant_id"], unique=False)
    op.create_table(
        "ai_models",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("family", sa.String(length=50), nullable=True),
        sa.Column("provider_type", sa.String(length=32), nullable=False),
        sa.Column("provider_id", sa.Uuid(), nullable=True),
        sa.Column("context_window", sa.Integer(), nullable=True),
        sa.Column("max_output_tokens", sa.Integer(), nullable=True),
        sa.Column("vision", sa.Boolean(), nullable=False),
        sa.Column("reasoning", sa.Boolean(), nullable=False),
        sa.Column("tool_calling", sa.Boolean(), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("hosting", sa.String(length=32), nullable=False),
        sa.Column("security_level", sa.Integer(), nullable=False),
        sa.Column("is_enabled", sa.Boolean(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("input_price_per_million", sa.Numeric(precision=12, scale=6), nullable=True),
        sa.Column("output_price_per_million", sa.Numeric(precision=12, scale=6), nullable=True),
        sa.Column("fallback_model_ids", postgresql.ARRAY(sa.Uuid()), nullable=False),
        sa.Column("extra", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["model_providers.id"],
            name=op.f("fk_ai_models_provider_id_model_providers"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_ai_models_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_models")),
        sa.UniqueConstraint(
            "tenant_id", "kind", "display_name", name=op.f("uq_ai_models_tenant_id_kind_display_name")
        ),
    )
    op.create_index(op.f("ix_ai_models_provider_id"), "ai_models", ["provider_id"], unique=False)
    op.create_index(op.f("ix_ai_models_tenant_id"), "ai_models", ["tenant_id"], unique=False)
    op.create_index(
        "uq_ai_models_one_default_per_kind",
        "ai_models",
        ["tenant_id", "kind"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("space_id", sa.Uuid(), nullable=True),
        sa.Column("assistant_id", sa.Uuid(), nullable=True),
        sa.Column("model_id", sa.Uuid(), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("provider_type", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Numeric(precision=14, scale=6), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["ai_models.id"],
            name=op.f("fk_usage_records_model_id_ai_models"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_records_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    op.create_index(op.f("ix_usage_records_space_id"), "usage_records", ["space_id"], unique=False)
    op.create_index(
        "ix_usage_records_tenant_created", "usage_records", ["tenant_id", "created_at"], unique=False
    )
    op.create_index(op.f("ix_usage_records_tenant_id"), "usage_records", ["tenant_id"], unique=False)
    op.create_index(op.f("ix_usage_records_user_id"), "usage_records", ["user_id"], unique=False)

    for table in ("model_providers", "ai_models", "usage_records", "budgets"):
        for statement in row_level_security_sql(table):
            op.execute(statement)


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_records_user_id"), table_name="usage_records")
    op.drop_index(op.f("ix_usage_records_tenant_id"), table_name="usage_records")
    op.drop_index("ix_usage_records_tenant_created", table_name="usage_records")
    op.drop_index(op.f("ix_usage_records_space_id"), table_name="usage_records")
    op.drop_table("usage_records")
    op.drop_index(
        "uq_ai_models_one_default_per_kind", table_name="ai_models", postgresql_where=sa.text("is_default")
    )
    op.drop_index(op.f("ix_ai_models_tenant_id"), table_name="ai_models")
    op.drop_index(op.f("ix_ai_models_provider_id"), table_name="ai_models")
    op.drop_table("ai_models")
    op.drop_index(op.f("ix_model_providers_tenant_id"), table_name="model_providers")
    op.drop_table("model_providers")
    op.drop_index("uq_budgets_scope", table_name="budgets")
    op.drop_index(op.f("ix_budgets_tenant_id"), table_name="budgets")
    op.drop_table("budgets")
