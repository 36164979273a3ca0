"""moderation: policies, records, holds, evidence, review

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kit.db

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('account_holds',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('record_id', sa.String(length=40), nullable=True),
    sa.Column('evidence_id', sa.String(length=40), nullable=True),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('released_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('released_by', sa.String(length=64), nullable=True),
    sa.Column('release_note', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('active', 'released')", name=op.f('ck_account_holds_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account_holds'))
    )
    with op.batch_alter_table('account_holds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_holds_account_id'), ['account_id'], unique=False)

    op.create_table('moderation_evidence',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('record_id', sa.String(length=40), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.String(length=64), nullable=False),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('manifest_path', sa.String(length=300), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_moderation_evidence'))
    )
    with op.batch_alter_table('moderation_evidence', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_moderation_evidence_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_moderation_evidence_record_id'), ['record_id'], unique=False)

    op.create_table('moderation_policies',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('subject_id', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('actions', sa.JSON(), nullable=False),
    sa.Column('nsfw_threshold', sa.Double(), nullable=True),
    sa.Column('verified', sa.Boolean(), nullable=False),
    sa.Column('nsfw_opt_in', sa.Boolean(), nullable=False),
    sa.Column('custom_terms', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("scope IN ('model', 'account')", name=op.f('ck_moderation_policies_scope')),
    sa.CheckConstraint("source IN ('partner', 'platform')", name=op.f('ck_moderation_policies_source')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_moderation_policies')),
    sa.UniqueConstraint('scope', 'subject_id', 'source', name=op.f('uq_moderation_policies_scope_subject_id_source'))
    )

    op.create_table('moderation_policy_changes',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('policy_id', sa.String(length=40), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('snapshot', sa.JSON(), nullable=False),
    sa.Column('changed_by', sa.String(length=64), nullable=False),
    sa.Column('changed_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_moderation_policy_changes'))
    )
    with op.batch_alter_table('moderation_policy_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_moderation_policy_changes_policy_id'), ['policy_id'], unique=False)

    op.create_table('moderation_records',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.String(length=64), nullable=False),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('categories', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('scores', sa.JSON(), nullable=False),
    sa.Column('checks', sa.JSON(), nullable=False),
    sa.Column('policy_version', sa.String(length=40), nullable=False),
    sa.Column('policy', sa.JSON(), nullable=False),
    sa.Column('request_options', sa.JSON(), nullable=False),
    sa.Column('minor_signal', sa.Boolean(), nullable=False),
    sa.Column('nsfw', sa.Boolean(), nullable=False),
    sa.Column('files_checked', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('latency_ms', sa.Double(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("decision IN ('passed', 'flagged', 'blocked')", name=op.f('ck_moderation_records_decision')),
    sa.CheckConstraint("stage IN ('input', 'output')", name=op.f('ck_moderation_records_stage')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_moderation_records'))
    )
    with op.batch_alter_table('moderation_records', schema=None) as batch_op:
        batch_op.create_index('ix_moderation_records_account_created', ['account_id', 'created_at'], unique=False)
        batch_op.create_index('ix_moderation_records_model_created', ['model_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_moderation_records_request_id'), ['request_id'], unique=False)

    op.create_table('moderation_review_tasks',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.String(length=64), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('record_id', sa.String(length=40), nullable=False),
    sa.Column('evidence_id', sa.String(length=40), nullable=True),
    sa.Column('hold_id', sa.String(length=40), nullable=True),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.String(length=64), nullable=True),
    sa.Column('resolution_note', sa.Text(), nullable=True),
    sa.Column('external_ref', sa.String(length=200), nullable=True),
    sa.CheckConstraint("status IN ('open', 'reported', 'dismissed', 'confirmed')", name=op.f('ck_moderation_review_tasks_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_moderation_review_tasks'))
    )
    with op.batch_alter_table('moderation_review_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_moderation_review_tasks_account_id'), ['account_id'], unique=False)
        batch_op.create_index('ix_moderation_review_tasks_status_priority', ['status', 'priority', 'created_at'], unique=False)

    op.create_table('moderation_staff',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('key_digest', sa.String(length=64), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("role IN ('reviewer', 'admin')", name=op.f('ck_moderation_staff_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_moderation_staff')),
    sa.UniqueConstraint('key_digest', name=op.f('uq_moderation_staff_key_digest'))
    )


def downgrade() -> None:
    op.drop_table('moderation_staff')

    with op.batch_alter_table('moderation_review_tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_moderation_review_tasks_status_priority')
        batch_op.drop_index(batch_op.f('ix_moderation_review_tasks_account_id'))

    op.drop_table('moderation_review_tasks')

    with op.batch_alter_table('moderation_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_moderation_records_request_id'))
        batch_op.drop_index('ix_moderation_records_model_created')
        batch_op.drop_index('ix_moderation_records_account_created')

    op.drop_table('moderation_records')

    with op.batch_alter_table('moderation_policy_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_moderation_policy_changes_policy_id'))

    op.drop_table('moderation_policy_changes')

    op.drop_table('moderation_policies')

    with op.batch_alter_table('moderation_evidence', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_moderation_evidence_record_id'))
        batch_op.drop_index(batch_op.f('ix_moderation_evidence_account_id'))

    op.drop_table('moderation_evidence')

    with op.batch_alter_table('account_holds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_holds_account_id'))

    op.drop_table('account_holds')
