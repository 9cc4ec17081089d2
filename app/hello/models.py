"""The sample app's one table: a log of page visits."""

from __future__ import annotations

from datetime import UTC, datetime

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

db = SQLAlchemy()


class Visit(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(db.String(200))
    at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))
