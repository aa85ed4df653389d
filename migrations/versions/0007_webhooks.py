"""webhooks: the durable outbox of events for the platform's backend

Revision ID: 0007
Revises: 0006 (main's head, photos, at the last merge; the moderation branch adds another 0006: the chain is fixed at merge)
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('webhook_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', chat.db.ExactString(64), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', chat.db.UTCDateTime(), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', chat.db.UTCDateTime(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('window_start', chat.db.UTCDateTime(), nullable=False),
    sa.Column('delivered_at', chat.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', chat.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_outbox')),
    sa.UniqueConstraint('event_id', name=op.f('uq_webhook_outbox_event_id'))
    )
    with op.batch_alter_table('webhook_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_outbox_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_outbox_status_next_attempt_at')
    op.drop_table('webhook_outbox')
