"""billing: accounts, pricing, usage, ledger, close, payouts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kit.db

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('billing_mode', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('commercial_use', sa.Boolean(), nullable=False),
    sa.Column('stripe_customer_id', sa.String(length=64), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts'))
    )

    op.create_table('billing_periods',
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('closed_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('totals', sa.JSON(), nullable=False),
    sa.CheckConstraint("status IN ('open', 'closing', 'closed')", name=op.f('ck_billing_periods_status')),
    sa.PrimaryKeyConstraint('period', name=op.f('pk_billing_periods'))
    )

    op.create_table('finance_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_finance_keys')),
    sa.UniqueConstraint('digest', name=op.f('uq_finance_keys_digest'))
    )

    op.create_table('payees',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('ref', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('stripe_account_id', sa.String(length=64), nullable=True),
    sa.Column('report_url', sa.String(length=2000), nullable=True),
    sa.Column('report_token', sa.String(length=400), nullable=True),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('partner', 'licensor')", name=op.f('ck_payees_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payees')),
    sa.UniqueConstraint('kind', 'ref', name=op.f('uq_payees_kind_ref'))
    )

    op.create_table('stripe_events',
    sa.Column('id', sa.String(length=80), nullable=False),
    sa.Column('type', sa.String(length=80), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('outcome', sa.String(length=200), nullable=False),
    sa.Column('received_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_events'))
    )

    op.create_table('usage_counters',
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=24, scale=6), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'key', 'period', name=op.f('pk_usage_counters'))
    )

    op.create_table('credit_balances',
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('balance_micros', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_credit_balances_account_id_accounts')),
    sa.PrimaryKeyConstraint('account_id', name=op.f('pk_credit_balances'))
    )

    op.create_table('credit_topups',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('payment_intent_id', sa.String(length=64), nullable=True),
    sa.Column('client_secret', sa.String(length=200), nullable=True),
    sa.Column('last_error', sa.String(length=1000), nullable=True),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('credited_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('amount_cents > 0', name=op.f('ck_credit_topups_amount_cents')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_credit_topups_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_topups')),
    sa.UniqueConstraint('payment_intent_id', name=op.f('uq_credit_topups_payment_intent_id'))
    )
    with op.batch_alter_table('credit_topups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credit_topups_account_id'), ['account_id'], unique=False)

    op.create_table('invoices',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('total_micros', sa.BigInteger(), nullable=False),
    sa.Column('carried_in_micros', sa.BigInteger(), nullable=False),
    sa.Column('amount_due_cents', sa.BigInteger(), nullable=False),
    sa.Column('carried_out_micros', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('stripe_invoice_id', sa.String(length=64), nullable=True),
    sa.Column('amount_paid_cents', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(length=1000), nullable=True),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('paid_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("kind IN ('invoice', 'statement')", name=op.f('ck_invoices_kind')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_invoices_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoices')),
    sa.UniqueConstraint('account_id', 'period', 'currency', 'kind', name=op.f('uq_invoices_account_id_period_currency_kind')),
    sa.UniqueConstraint('stripe_invoice_id', name=op.f('uq_invoices_stripe_invoice_id'))
    )
    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invoices_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_invoices_period'), ['period'], unique=False)

    op.create_table('licensor_reports',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('payee_id', sa.String(length=40), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.JSON(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['payee_id'], ['payees.id'], name=op.f('fk_licensor_reports_payee_id_payees')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_licensor_reports')),
    sa.UniqueConstraint('payee_id', 'period', name=op.f('uq_licensor_reports_payee_id_period'))
    )

    op.create_table('payee_statements',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('payee_id', sa.String(length=40), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('gross_micros', sa.BigInteger(), nullable=False),
    sa.Column('fees_micros', sa.BigInteger(), nullable=False),
    sa.Column('royalties_micros', sa.BigInteger(), nullable=False),
    sa.Column('credits_micros', sa.BigInteger(), nullable=False),
    sa.Column('refunds_micros', sa.BigInteger(), nullable=False),
    sa.Column('net_micros', sa.BigInteger(), nullable=False),
    sa.Column('carried_in_micros', sa.BigInteger(), nullable=False),
    sa.Column('payable_micros', sa.BigInteger(), nullable=False),
    sa.Column('payout_cents', sa.BigInteger(), nullable=False),
    sa.Column('carried_out_micros', sa.BigInteger(), nullable=False),
    sa.Column('lines', sa.JSON(), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['payee_id'], ['payees.id'], name=op.f('fk_payee_statements_payee_id_payees')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payee_statements')),
    sa.UniqueConstraint('payee_id', 'period', 'currency', name=op.f('uq_payee_statements_payee_id_period_currency'))
    )
    with op.batch_alter_table('payee_statements', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payee_statements_payee_id'), ['payee_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_payee_statements_period'), ['period'], unique=False)

    op.create_table('pool_contracts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('pool', sa.String(length=64), nullable=False),
    sa.Column('monthly_fee_micros', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('latency_target_ms', sa.Integer(), nullable=False),
    sa.Column('effective_from', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('monthly_fee_micros >= 0', name=op.f('ck_pool_contracts_monthly_fee_micros')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_pool_contracts_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pool_contracts'))
    )
    with op.batch_alter_table('pool_contracts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pool_contracts_account_id'), ['account_id'], unique=False)

    op.create_table('invoice_lines',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('invoice_id', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=True),
    sa.Column('description', sa.String(length=300), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=24, scale=6), nullable=False),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=True),
    sa.Column('stripe_item_id', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_invoice_lines_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice_lines')),
    sa.UniqueConstraint('invoice_id', 'position', name=op.f('uq_invoice_lines_invoice_id_position'))
    )
    with op.batch_alter_table('invoice_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invoice_lines_invoice_id'), ['invoice_id'], unique=False)

    op.create_table('licenses',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('licensor', sa.String(length=64), nullable=True),
    sa.Column('royalty_bps', sa.Integer(), nullable=False),
    sa.Column('royalty_per_unit_micros', sa.BigInteger(), nullable=False),
    sa.Column('included_units', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('minimum_fee_micros', sa.BigInteger(), nullable=False),
    sa.Column('platform_fee_bps', sa.Integer(), nullable=False),
    sa.Column('hosting_fee_per_gpu_second_micros', sa.BigInteger(), nullable=False),
    sa.Column('effective_from', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("tier IN ('open', 'revenue_share', 'partner_priced')", name=op.f('ck_licenses_tier')),
    sa.CheckConstraint('platform_fee_bps BETWEEN 0 AND 10000', name=op.f('ck_licenses_platform_fee_bps')),
    sa.CheckConstraint('royalty_bps BETWEEN 0 AND 10000', name=op.f('ck_licenses_royalty_bps')),
    sa.CheckConstraint('royalty_per_unit_micros >= 0 AND minimum_fee_micros >= 0 AND hosting_fee_per_gpu_second_micros >= 0 AND included_units >= 0', name=op.f('ck_licenses_non_negative')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_licenses_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_licenses'))
    )
    with op.batch_alter_table('licenses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_licenses_model_id'), ['model_id'], unique=False)

    op.create_table('payouts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('statement_id', sa.String(length=40), nullable=False),
    sa.Column('payee_id', sa.String(length=40), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('stripe_transfer_id', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(length=1000), nullable=True),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('paid_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('amount_cents > 0', name=op.f('ck_payouts_amount_cents')),
    sa.ForeignKeyConstraint(['payee_id'], ['payees.id'], name=op.f('fk_payouts_payee_id_payees')),
    sa.ForeignKeyConstraint(['statement_id'], ['payee_statements.id'], name=op.f('fk_payouts_statement_id_payee_statements')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payouts')),
    sa.UniqueConstraint('statement_id', name=op.f('uq_payouts_statement_id')),
    sa.UniqueConstraint('stripe_transfer_id', name=op.f('uq_payouts_stripe_transfer_id'))
    )
    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payouts_payee_id'), ['payee_id'], unique=False)

    op.create_table('sla_credits',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('contract_id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('pool', sa.String(length=64), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('within_target', sa.BigInteger(), nullable=False),
    sa.Column('compliance_bps', sa.Integer(), nullable=False),
    sa.Column('credit_bps', sa.Integer(), nullable=False),
    sa.Column('fee_micros', sa.BigInteger(), nullable=False),
    sa.Column('credit_micros', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_sla_credits_account_id_accounts')),
    sa.ForeignKeyConstraint(['contract_id'], ['pool_contracts.id'], name=op.f('fk_sla_credits_contract_id_pool_contracts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sla_credits')),
    sa.UniqueConstraint('contract_id', 'period', name=op.f('uq_sla_credits_contract_id_period'))
    )
    with op.batch_alter_table('sla_credits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sla_credits_account_id'), ['account_id'], unique=False)

    op.create_table('price_cards',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('version_id', sa.String(length=40), nullable=True),
    sa.Column('account_id', sa.String(length=40), nullable=True),
    sa.Column('unit', sa.String(length=32), nullable=False),
    sa.Column('unit_price_micros', sa.BigInteger(), nullable=False),
    sa.Column('tiers', sa.JSON(), nullable=True),
    sa.Column('minimum_micros', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('effective_from', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ends_at', kit.db.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('minimum_micros >= 0', name=op.f('ck_price_cards_minimum_micros')),
    sa.CheckConstraint('unit_price_micros >= 0', name=op.f('ck_price_cards_unit_price_micros')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_price_cards_account_id_accounts')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_price_cards_model_id_models')),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], name=op.f('fk_price_cards_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_price_cards'))
    )
    with op.batch_alter_table('price_cards', schema=None) as batch_op:
        batch_op.create_index('ix_price_cards_model_effective', ['model_id', 'effective_from'], unique=False)
        batch_op.create_index(batch_op.f('ix_price_cards_model_id'), ['model_id'], unique=False)

    op.create_table('usage_records',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('meter', sa.String(length=32), nullable=False),
    sa.Column('quantity', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('billable_quantity', sa.Numeric(precision=20, scale=6), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=40), nullable=False),
    sa.Column('version_id', sa.String(length=40), nullable=False),
    sa.Column('price_card_id', sa.String(length=40), nullable=False),
    sa.Column('license_id', sa.String(length=40), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('billing_mode', sa.String(length=8), nullable=False),
    sa.Column('licensor', sa.String(length=64), nullable=True),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('platform_micros', sa.BigInteger(), nullable=False),
    sa.Column('royalty_micros', sa.BigInteger(), nullable=False),
    sa.Column('partner_micros', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('event_period', sa.String(length=7), nullable=False),
    sa.Column('occurred_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ingested_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('units', sa.JSON(), nullable=False),
    sa.Column('transaction_id', sa.String(length=40), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_usage_records_account_id_accounts')),
    sa.ForeignKeyConstraint(['license_id'], ['licenses.id'], name=op.f('fk_usage_records_license_id_licenses')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_usage_records_model_id_models')),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.id'], name=op.f('fk_usage_records_partner_id_partners')),
    sa.ForeignKeyConstraint(['price_card_id'], ['price_cards.id'], name=op.f('fk_usage_records_price_card_id_price_cards')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_records')),
    sa.UniqueConstraint('request_id', 'meter', name=op.f('uq_usage_records_request_id_meter'))
    )
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.create_index('ix_usage_records_account_occurred', ['account_id', 'occurred_at'], unique=False)
        batch_op.create_index('ix_usage_records_period_partner', ['period', 'partner_id'], unique=False)

    op.create_table('ledger_entries',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('transaction_id', sa.String(length=40), nullable=False),
    sa.Column('ledger_account', sa.String(length=120), nullable=False),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('usage_id', sa.String(length=40), nullable=True),
    sa.Column('ref', sa.String(length=40), nullable=True),
    sa.Column('memo', sa.String(length=200), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['usage_id'], ['usage_records.id'], name=op.f('fk_ledger_entries_usage_id_usage_records')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries'))
    )
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_entries_ledger_account', ['ledger_account', 'period'], unique=False)
        batch_op.create_index('ix_ledger_entries_ref', ['ref'], unique=False, postgresql_where=sa.text('ref IS NOT NULL'), sqlite_where=sa.text('ref IS NOT NULL'))
        batch_op.create_index(batch_op.f('ix_ledger_entries_transaction_id'), ['transaction_id'], unique=False)

    op.create_table('refunds',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('usage_id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('partner_id', sa.String(length=40), nullable=False),
    sa.Column('licensor', sa.String(length=64), nullable=True),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('platform_micros', sa.BigInteger(), nullable=False),
    sa.Column('royalty_micros', sa.BigInteger(), nullable=False),
    sa.Column('partner_micros', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('transaction_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', kit.db.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('amount_micros > 0', name=op.f('ck_refunds_amount_micros')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_refunds_account_id_accounts')),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_refunds_model_id_models')),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.id'], name=op.f('fk_refunds_partner_id_partners')),
    sa.ForeignKeyConstraint(['usage_id'], ['usage_records.id'], name=op.f('fk_refunds_usage_id_usage_records')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds'))
    )
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refunds_period'), ['period'], unique=False)
        batch_op.create_index(batch_op.f('ix_refunds_usage_id'), ['usage_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refunds_usage_id'))
        batch_op.drop_index(batch_op.f('ix_refunds_period'))

    op.drop_table('refunds')

    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_entries_transaction_id'))
        batch_op.drop_index('ix_ledger_entries_ref', postgresql_where=sa.text('ref IS NOT NULL'), sqlite_where=sa.text('ref IS NOT NULL'))
        batch_op.drop_index('ix_ledger_entries_ledger_account')

    op.drop_table('ledger_entries')

    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_records_period_partner')
        batch_op.drop_index('ix_usage_records_account_occurred')

    op.drop_table('usage_records')

    with op.batch_alter_table('price_cards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_price_cards_model_id'))
        batch_op.drop_index('ix_price_cards_model_effective')

    op.drop_table('price_cards')

    with op.batch_alter_table('sla_credits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sla_credits_account_id'))

    op.drop_table('sla_credits')

    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payouts_payee_id'))

    op.drop_table('payouts')

    with op.batch_alter_table('licenses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_licenses_model_id'))

    op.drop_table('licenses')

    with op.batch_alter_table('invoice_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invoice_lines_invoice_id'))

    op.drop_table('invoice_lines')

    with op.batch_alter_table('pool_contracts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pool_contracts_account_id'))

    op.drop_table('pool_contracts')

    with op.batch_alter_table('payee_statements', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payee_statements_period'))
        batch_op.drop_index(batch_op.f('ix_payee_statements_payee_id'))

    op.drop_table('payee_statements')

    op.drop_table('licensor_reports')

    with op.batch_alter_table('invoices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invoices_period'))
        batch_op.drop_index(batch_op.f('ix_invoices_account_id'))

    op.drop_table('invoices')

    with op.batch_alter_table('credit_topups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credit_topups_account_id'))

    op.drop_table('credit_topups')

    op.drop_table('credit_balances')

    op.drop_table('usage_counters')

    op.drop_table('stripe_events')

    op.drop_table('payees')

    op.drop_table('finance_keys')

    op.drop_table('billing_periods')

    op.drop_table('accounts')
