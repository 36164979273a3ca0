"""gateway: request leases for durable execution

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kit.db

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column('lease_expires_at', kit.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_requests_lease', ['status', 'lease_expires_at'], unique=False,
                              postgresql_where=sa.text('lease_expires_at IS NOT NULL'),
                              sqlite_where=sa.text('lease_expires_at IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_index('ix_requests_lease', postgresql_where=sa.text('lease_expires_at IS NOT NULL'),
                            sqlite_where=sa.text('lease_expires_at IS NOT NULL'))
        batch_op.drop_column('lease_expires_at')
        batch_op.drop_column('lease_owner')
