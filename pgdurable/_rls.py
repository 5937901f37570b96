"""Row-level security contexts: act as a user, or bypass RLS, for one transaction.

A job has no user session, so under the app's RLS policies it sees nothing
until it says on whose behalf it works. Both ways are explicit and audited:
`as_user` sets the app's user setting (`SET LOCAL`), so the app's own
policies apply as that user; `rls_bypass` sets a bypass setting the
policies honour, or switches to a role with BYPASSRLS (`SET LOCAL ROLE`).
Either lasts until the transaction ends and writes an audit row in it.

Which run, function and step an audit row names comes from the context
variables (_context.py) the worker sets while it executes a handler and its steps.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from ._context import CURRENT_RUN, CURRENT_STEP, BaseContext
from .errors import ConfigurationError, RlsContextError

if TYPE_CHECKING:
    from ._app import Durable
    from ._store import Store

_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
_SETTING = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+")  # a custom GUC: prefix.name
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class Rls:
    """An app's RLS settings, and the audited switches that use them."""

    def __init__(
        self, store: Store, *, user_setting: str, bypass_setting: str, bypass_role: str | None,
    ) -> None:
        self._store = store
        self.user_setting = _checked(user_setting, _SETTING, "user_setting",
                                     "a custom setting name such as 'app.user_id'")
        self.bypass_setting = _checked(bypass_setting, _SETTING, "bypass_setting",
                                       "a custom setting name such as 'app.rls_bypass'")
        self.bypass_role = None if bypass_role is None else check_role(bypass_role, "bypass_role")

    def as_user(self, conn: psycopg.Connection[Any], user_id: object, tag: str | None = None,
                ctx: BaseContext | None = None) -> None:
        """Act as `user_id` in `conn`'s transaction: the app's policies apply to it."""
        user = _user_text(user_id)
        self._switch(conn, "as_user", None if tag is None else _tag(tag), user, ctx,
                     self.user_setting, user)

    def bypass(self, conn: psycopg.Connection[Any], tag: str, ctx: BaseContext | None = None) -> None:
        """Bypass RLS in `conn`'s transaction, under `tag` (names the job in the audit)."""
        setting, value = (("role", self.bypass_role) if self.bypass_role is not None
                          else (self.bypass_setting, "on"))
        self._switch(conn, "bypass", _tag(tag), None, ctx, setting, value)

    def _switch(self, conn: psycopg.Connection[Any], kind: str, tag: str | None,
                user: str | None, ctx: BaseContext | None, setting: str, value: str) -> None:
        if conn.autocommit and conn.info.transaction_status != TransactionStatus.INTRANS:
            raise RlsContextError(
                f"{kind} needs a connection in an open transaction (it lasts until that "
                "transaction ends); use `with conn.transaction():` first")
        if ctx is None and (current := CURRENT_RUN.get()) is not None:
            ctx = current[1]
        run_id, function_id = (None, None) if ctx is None else (ctx.run_id, ctx.function_id)
        self._store.rls_context(conn, kind, tag, user, run_id, function_id, CURRENT_STEP.get(),
                                setting, value)


def rls_bypass(conn: psycopg.Connection[Any], tag: str, *, app: Durable | None = None) -> None:
    """Bypass RLS until `conn`'s open transaction ends, audited under `tag`.

    Inside a handler the app is the run's; elsewhere pass `app=`.
    """
    _rls_of(app, "rls_bypass").bypass(conn, tag)


def as_user(conn: psycopg.Connection[Any], user_id: object, *, tag: str | None = None,
            app: Durable | None = None) -> None:
    """Act as `user_id` until `conn`'s open transaction ends, audited."""
    _rls_of(app, "as_user").as_user(conn, user_id, tag)


def _rls_of(app: Durable | None, what: str) -> Rls:
    if app is not None:
        return app.rls
    current = CURRENT_RUN.get()
    if current is None:
        raise ConfigurationError(f"pgdurable.{what} outside a run needs app=<your Durable app>")
    return current[0]


def check_role(name: object, what: str) -> str:
    return _checked(name, _ROLE, what, "a role name (lower case, digits, underscores)")


def _checked(value: object, pattern: re.Pattern[str], name: str, expected: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigurationError(f"{name} {value!r} is not valid: expected {expected}")
    return value


def _tag(tag: object) -> str:
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise RlsContextError(
            f"RLS tag {tag!r} is not valid: it names the job in the audit trail, e.g. "
            "'jobs:process-message' (letters, digits and . _ : / @ -, at most 128)")
    return tag


def _user_text(user_id: object) -> str:
    if isinstance(user_id, bool) or not isinstance(user_id, str | int | uuid.UUID):
        raise RlsContextError(f"user id must be a str, an int or a UUID, not {user_id!r}")
    text = str(user_id)
    if not text or "\x00" in text or len(text) > 256:
        raise RlsContextError(f"user id {user_id!r} is empty, too long or holds a NUL byte")
    return text
