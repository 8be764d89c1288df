"""Claims: which recipe each worker of a shared study runs, so that no recipe runs twice.

Optuna shares trials between workers through its storage but not the right to run one: two
workers can sample the same recipe at the same moment, and on a small space they often do. A
claim is one row in a table beside Optuna's, in the same database, unique per (study, recipe):
the insert either succeeds, and the recipe is this worker's, or fails, and it is someone else's.
That holds on PostgreSQL and SQLite alike, and for workers on different machines. Claims are also
the shared trial budget: they are numbered as they are made, and a claim beyond the budget is
given back.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

_META = sa.MetaData()
TABLE = sa.Table(
    "edgewise_claims", _META,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String(512), nullable=False),
    sa.Column("recipe", sa.String(512), nullable=False),
    sa.Column("trial", sa.Integer, nullable=False),
    sa.Column("worker", sa.String(256), nullable=False),
    sa.UniqueConstraint("study", "recipe", name="edgewise_claims_unique"),
)


class Claims:
    """The claims of one study. `url` is the study's storage (None: an in-memory study, one process)."""

    def __init__(self, url: str | None, study: str, worker: str) -> None:
        self.study, self.worker = study, worker
        if url is None:
            url = "sqlite://"   # one process: an in-memory table serves the same logic
        self._engine = sa.create_engine(url, poolclass=sa.pool.StaticPool if url == "sqlite://" else None)
        for attempt in range(3):   # two workers creating the table at once: one wins, the other sees it
            try:
                _META.create_all(self._engine, checkfirst=True)
                break
            except (IntegrityError, OperationalError, ProgrammingError):
                if attempt == 2:
                    raise

    def claim(self, recipe: str, trial: int) -> bool:
        """True if `recipe` is now this worker's to run as `trial`; False if another worker holds it."""
        try:
            with self._engine.begin() as db:
                db.execute(sa.insert(TABLE).values(study=self.study, recipe=recipe, trial=trial, worker=self.worker))
            return True
        except IntegrityError:
            return False

    def holder(self, recipe: str) -> tuple[int, str] | None:
        """(trial number, worker) that holds `recipe`, if any."""
        with self._engine.connect() as db:
            row = db.execute(sa.select(TABLE.c.trial, TABLE.c.worker).where(TABLE.c.study == self.study,
                                                                            TABLE.c.recipe == recipe)).first()
        return tuple(row) if row else None

    def worker_of(self, trial: int) -> str | None:
        """The worker (host:pid) whose claim `trial` is, if it holds one."""
        with self._engine.connect() as db:
            return db.execute(sa.select(TABLE.c.worker).where(TABLE.c.study == self.study,
                                                              TABLE.c.trial == trial)).scalar()

    def take_over(self, recipe: str, stale_trial: int, trial: int) -> bool:
        """Claim `recipe` from a trial that died holding it; only one worker can succeed."""
        with self._engine.begin() as db:
            gone = db.execute(sa.delete(TABLE).where(TABLE.c.study == self.study, TABLE.c.recipe == recipe,
                                                     TABLE.c.trial == stale_trial)).rowcount
        return bool(gone) and self.claim(recipe, trial)

    def release(self, recipe: str, trial: int) -> None:
        """Give `recipe` back (its trial was interrupted or is beyond the budget)."""
        with self._engine.begin() as db:
            db.execute(sa.delete(TABLE).where(TABLE.c.study == self.study, TABLE.c.recipe == recipe,
                                              TABLE.c.trial == trial))

    def rank(self, recipe: str) -> int:
        """How many claims of the study came before this recipe's: the shared trial budget's order."""
        with self._engine.connect() as db:
            seq = db.execute(sa.select(TABLE.c.seq).where(TABLE.c.study == self.study,
                                                          TABLE.c.recipe == recipe)).scalar()
            if seq is None:
                return -1
            return db.execute(sa.select(sa.func.count()).select_from(TABLE).where(
                TABLE.c.study == self.study, TABLE.c.seq < seq)).scalar()

    def taken(self) -> dict[str, str]:
        """recipe -> the worker (host:pid) that claimed it."""
        with self._engine.connect() as db:
            return dict(db.execute(sa.select(TABLE.c.recipe, TABLE.c.worker).where(TABLE.c.study == self.study)).all())

    def close(self) -> None:
        self._engine.dispose()
