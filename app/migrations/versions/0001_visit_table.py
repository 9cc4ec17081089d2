"""The visit table.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Hosts set up before the sample app used migrations made this table with
`flask init-db` (create_all): the table is created only where it is missing, and
`flask db upgrade` records the revision either way.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    if sa.inspect(op.get_bind()).has_table("visit"):
        return
    op.create_table(
        "visit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade():
    op.drop_table("visit")
