"""create single sign-on tables: user identities and tenant federation

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 20:10:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from allting.platform.tenancy import row_level_security_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _common() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "user_identities",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("issuer", sa.String(length=1000), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        *_common(),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_user_identities_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_identities_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_identities")),
        sa.UniqueConstraint(
            "tenant_id", "issuer", "subject", name=op.f("uq_user_identities_tenant_id_issuer_subject")
        ),
    )
    op.create_index(op.f("ix_user_identities_tenant_id"), "user_identities", ["tenant_id"], unique=False)
    op.create_index(op.f("ix_user_identities_user_id"), "user_identities", ["user_id"], unique=False)

    op.create_table(
        "tenant_federations",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("discovery_endpoint", sa.String(length=1000), nullable=False),
        sa.Column("issuer", sa.String(length=1000), nullable=False),
        sa.Column("client_id", sa.String(length=500), nullable=False),
        sa.Column("encrypted_client_secret", sa.Text(), nullable=False),
        sa.Column("secret_hint", sa.String(length=8), nullable=False),
        sa.Column("allowed_domains", postgresql.ARRAY(sa.String(length=253)), nullable=False),
        sa.Column("jit_provisioning", sa.Boolean(), nullable=False),
        sa.Column("default_role_id", sa.Uuid(), nullable=True),
        sa.Column("configured_at", sa.DateTime(timezone=True), nullable=False),
        *_common(),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_federations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["default_role_id"],
            ["roles.id"],
            name=op.f("fk_tenant_federations_default_role_id_roles"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_federations")),
        sa.UniqueConstraint("tenant_id", name=op.f("uq_tenant_federations_tenant_id")),
    )
    op.create_index(
        op.f("ix_tenant_federations_tenant_id"), "tenant_federations", ["tenant_id"], unique=False
    )

    for table in ("user_identities", "tenant_federations"):
        for statement in row_level_security_sql(table):
            op.execute(statement)


def downgrade() -> None:
    op.drop_table("tenant_federations")
    op.drop_table("user_identities")
