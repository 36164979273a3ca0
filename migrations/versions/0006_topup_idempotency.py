"""billing: Idempotency-Key on customer top-ups

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('credit_topups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('body_digest', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_credit_topups_account_id_idempotency_key'),
                                          ['account_id', 'idempotency_key'])


def downgrade() -> None:
    with op.batch_alter_table('credit_topups', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_credit_topups_account_id_idempotency_key'), type_='unique')
        batch_op.drop_column('body_digest')
        batch_op.drop_column('idempotency_key')
