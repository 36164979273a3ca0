"""partners: organisations, models, versions, deployments, tenancy, portal

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kit.db

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('deployment_logs',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('deployment_id', sa.String(length=40), nullable=False),
    sa.Column('replica_id', sa.String(length=120), nullable=True),
    sa.Column('request_id', sa.String(length=40), nullable=True),
    sa.Column('stream', sa.String(length=8), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_deployment_logs'))
    )
    with op.batch_alter_table('deployment_logs', schema=None) as batch_op:
        batch_op.create_index('ix_deployment_logs_deployment_seq', ['deployment_id', 'seq'], unique=False)
        batch_op.create_index('ix_deployment_logs_request', ['request_id', 'seq'], unique=False)

    op.create_table('partner_data_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=False),
    sa.Column('kek_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('retired_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_partner_data_keys')),
    sa.UniqueConstraint('partner_id', 'version', name=op.f('uq_partner_data_keys_partner_id_version'))
    )
    with op.batch_alter_table('partner_data_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_partner_data_keys_partner_id'), ['partner_id'], unique=False)

    op.create_table('partners',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_partners')),
    sa.UniqueConstraint('slug', name=op.f('uq_partners_slug'))
    )

    op.create_table('artifact_blobs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=64), nullable=False),
    sa.Column('digest', sa.String(length=80), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('storage_key', sa.String(length=255), nullable=False),
    sa.Column('ciphertext_size', sa.BigInteger(), nullable=False),
    sa.Column('ciphertext_sha256', sa.String(length=64), nullable=False),
    sa.Column('data_key_id', sa.String(length=40), nullable=False),
    sa.Column('chunk_size', sa.Integer(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['data_key_id'], ['partner_data_keys.id'], name=op.f('fk_artifact_blobs_data_key_id_partner_data_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifact_blobs')),
    sa.UniqueConstraint('partner_id', 'digest', name=op.f('uq_artifact_blobs_partner_id_digest'))
    )

    op.create_table('models',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=40), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('description', sa.String(length=2000), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.id'], name=op.f('fk_models_partner_id_partners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('partner_id', 'slug', name=op.f('uq_models_partner_id_slug'))
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_partner_id'), ['partner_id'], unique=False)

    op.create_table('partner_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.id'], name=op.f('fk_partner_keys_partner_id_partners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_partner_keys')),
    sa.UniqueConstraint('digest', name=op.f('uq_partner_keys_digest'))
    )
    with op.batch_alter_table('partner_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_partner_keys_partner_id'), ['partner_id'], unique=False)

    op.create_table('partner_members',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=40), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('invite_digest', sa.String(length=64), nullable=True),
    sa.Column('invite_expires_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('failed_sign_ins', sa.Integer(), nullable=False),
    sa.Column('locked_until', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_sign_in_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('disabled_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.id'], name=op.f('fk_partner_members_partner_id_partners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_partner_members')),
    sa.UniqueConstraint('email', name=op.f('uq_partner_members_email')),
    sa.UniqueConstraint('invite_digest', name=op.f('uq_partner_members_invite_digest'))
    )
    with op.batch_alter_table('partner_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_partner_members_partner_id'), ['partner_id'], unique=False)

    op.create_table('artifact_access_log',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=64), nullable=False),
    sa.Column('blob_id', sa.String(length=40), nullable=False),
    sa.Column('digest', sa.String(length=80), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('deployment_id', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('accessed_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['blob_id'], ['artifact_blobs.id'], name=op.f('fk_artifact_access_log_blob_id_artifact_blobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifact_access_log'))
    )
    with op.batch_alter_table('artifact_access_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_artifact_access_log_blob_id'), ['blob_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_artifact_access_log_deployment_id'), ['deployment_id'], unique=False)
        batch_op.create_index('ix_artifact_access_log_partner_time', ['partner_id', 'accessed_at'], unique=False)

    op.create_table('model_versions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('artifact_digest', sa.String(length=80), nullable=False),
    sa.Column('artifact_size', sa.BigInteger(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('package', sa.JSON(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_versions_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('model_id', 'number', name=op.f('uq_model_versions_model_id_number'))
    )
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_versions_model_id'), ['model_id'], unique=False)

    op.create_table('portal_sessions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('member_id', sa.String(length=40), nullable=False),
    sa.Column('token_digest', sa.String(length=64), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('user_agent', sa.String(length=300), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['member_id'], ['partner_members.id'], name=op.f('fk_portal_sessions_member_id_partner_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_portal_sessions')),
    sa.UniqueConstraint('token_digest', name=op.f('uq_portal_sessions_token_digest'))
    )
    with op.batch_alter_table('portal_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_portal_sessions_member_id'), ['member_id'], unique=False)

    op.create_table('deployments',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('version_id', sa.String(length=40), nullable=False),
    sa.Column('pool', sa.String(length=64), nullable=False),
    sa.Column('min_replicas', sa.Integer(), nullable=False),
    sa.Column('max_replicas', sa.Integer(), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('keep_alive_s', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_deployments_model_id_models')),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], name=op.f('fk_deployments_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployments'))
    )
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployments_model_id'), ['model_id'], unique=False)

    op.create_table('upload_sessions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('version_id', sa.String(length=40), nullable=True),
    sa.Column('error', sa.String(length=2000), nullable=True),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_upload_sessions_model_id_models')),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.id'], name=op.f('fk_upload_sessions_partner_id_partners')),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], name=op.f('fk_upload_sessions_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_upload_sessions'))
    )
    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_upload_sessions_partner_id'), ['partner_id'], unique=False)

    op.create_table('deployment_events',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('deployment_id', sa.String(length=40), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('from_version', sa.Integer(), nullable=True),
    sa.Column('to_version', sa.Integer(), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_deployment_events_deployment_id_deployments')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_deployment_events_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployment_events'))
    )
    with op.batch_alter_table('deployment_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_events_deployment_id'), ['deployment_id'], unique=False)
        batch_op.create_index('ix_deployment_events_model_time', ['model_id', 'created_at'], unique=False)

    op.create_table('deployment_replicas',
    sa.Column('id', sa.String(length=120), nullable=False),
    sa.Column('deployment_id', sa.String(length=40), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('started_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_deployment_replicas_deployment_id_deployments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployment_replicas'))
    )
    with op.batch_alter_table('deployment_replicas', schema=None) as batch_op:
        batch_op.create_index('ix_deployment_replicas_deployment', ['deployment_id', 'started_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deployment_replicas', schema=None) as batch_op:
        batch_op.drop_index('ix_deployment_replicas_deployment')

    op.drop_table('deployment_replicas')

    with op.batch_alter_table('deployment_events', schema=None) as batch_op:
        batch_op.drop_index('ix_deployment_events_model_time')
        batch_op.drop_index(batch_op.f('ix_deployment_events_deployment_id'))

    op.drop_table('deployment_events')

    with op.batch_alter_table('upload_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_upload_sessions_partner_id'))

    op.drop_table('upload_sessions')

    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployments_model_id'))

    op.drop_table('deployments')

    with op.batch_alter_table('portal_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_portal_sessions_member_id'))

    op.drop_table('portal_sessions')

    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_versions_model_id'))

    op.drop_table('model_versions')

    with op.batch_alter_table('artifact_access_log', schema=None) as batch_op:
        batch_op.drop_index('ix_artifact_access_log_partner_time')
        batch_op.drop_index(batch_op.f('ix_artifact_access_log_deployment_id'))
        batch_op.drop_index(batch_op.f('ix_artifact_access_log_blob_id'))

    op.drop_table('artifact_access_log')

    with op.batch_alter_table('partner_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_partner_members_partner_id'))

    op.drop_table('partner_members')

    with op.batch_alter_table('partner_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_partner_keys_partner_id'))

    op.drop_table('partner_keys')

    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_partner_id'))

    op.drop_table('models')

    op.drop_table('artifact_blobs')

    op.drop_table('partners')

    with op.batch_alter_table('partner_data_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_partner_data_keys_partner_id'))

    op.drop_table('partner_data_keys')

    with op.batch_alter_table('deployment_logs', schema=None) as batch_op:
        batch_op.drop_index('ix_deployment_logs_request')
        batch_op.drop_index('ix_deployment_logs_deployment_seq')

    op.drop_table('deployment_logs')
