"""moderation: moderators per creator, sanctions (timeout, block), the moderation log, slow mode per room, pinned messages

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa
import chat.db


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'moderators',
        sa.Column('creator_id', chat.db.ExactString(64), nullable=False),
        sa.Column('user_id', chat.db.ExactString(64), nullable=False),
        sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('creator_id', 'user_id', name=op.f('pk_moderators')),
    )
    op.create_table(
        'sanctions',
        sa.Column('creator_id', chat.db.ExactString(64), nullable=False),
        sa.Column('user_id', chat.db.ExactString(64), nullable=False),
        sa.Column('blocked', sa.Boolean(), nullable=False),
        sa.Column('timeout_until', chat.db.UTCDateTime(), nullable=True),
        sa.Column('updated_at', chat.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('creator_id', 'user_id', name=op.f('pk_sanctions')),
    )
    op.create_index('ix_sanctions_user_id', 'sanctions', ['user_id'])
    op.create_table(
        'moderation_actions',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('creator_id', chat.db.ExactString(64), nullable=False),
        sa.Column('actor_id', chat.db.ExactString(64), nullable=True),
        sa.Column('action', sa.String(32), nullable=False),
        sa.Column('target_id', chat.db.ExactString(64), nullable=True),
        sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
        sa.Column('conversation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
        sa.Column('seconds', sa.Integer(), nullable=True),
        sa.Column('until', chat.db.UTCDateTime(), nullable=True),
        sa.Column('reason', sa.String(500), nullable=False),
        sa.Column('created_at', chat.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_moderation_actions')),
    )
    op.create_index('ix_moderation_actions_creator_id_id', 'moderation_actions', ['creator_id', 'id'])
    op.create_table(
        'slow_modes',
        sa.Column('conversation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('seconds', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'],
                                name=op.f('fk_slow_modes_conversation_id_conversations'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('conversation_id', name=op.f('pk_slow_modes')),
    )
    op.create_table(
        'pins',
        sa.Column('conversation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('pinned_by', chat.db.ExactString(64), nullable=True),
        sa.Column('pinned_at', chat.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'],
                                name=op.f('fk_pins_conversation_id_conversations'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'],
                                name=op.f('fk_pins_message_id_messages'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('conversation_id', 'message_id', name=op.f('pk_pins')),
    )


def downgrade() -> None:
    op.drop_table('pins')
    op.drop_table('slow_modes')
    op.drop_index('ix_moderation_actions_creator_id_id', table_name='moderation_actions')
    op.drop_table('moderation_actions')
    op.drop_index('ix_sanctions_user_id', table_name='sanctions')
    op.drop_table('sanctions')
    op.drop_table('moderators')
