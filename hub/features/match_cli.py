"""`hub match --cohort SLUG [--out FILE.csv]`: the same proposal as `!hub match`, from the command line.

It reads only: nothing is paired and the chat command's kept proposal is not
touched. `--out` writes the proposed pairs as a roster CSV (the mentee rows,
each naming its proposed mentor) to edit and bring in with `hub roster import`,
which makes exactly those pairs; the unmatched are printed, not written, since
a roster row cannot say "nobody".
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from sqlalchemy import select

from hub.clock import Clock, SystemClock
from hub.config import Settings
from hub.core.markup import echo
from hub.core.matching import Proposal, proposal_lines, propose
from hub.core.roster import COLUMNS
from hub.errors import HubError
from hub.features.matching_store import CohortMatch, load_cohort_match
from hub.storage.db import open_database
from hub.storage.models import Cohort, cohort_table

__all__ = ["CliProposal", "proposal_csv", "propose_for_cli"]


@dataclass(frozen=True)
class CliProposal:
    match: CohortMatch
    proposal: Proposal

    def text(self) -> str:
        inp = self.match.input
        head = (f"Proposal for {self.match.cohort.slug}: {len(self.proposal.pairs)} of {len(inp.mentees)} "
                f"unpaired mentees matched, {len(self.proposal.unmatched)} left unmatched.")
        return "\n".join([head, *proposal_lines(self.proposal, self.match.label)])


def proposal_csv(p: CliProposal) -> str:
    """A roster CSV: one mentee row per proposed pair, naming the mentor (Matrix id, else email)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for pair in p.proposal.pairs:
        mentee, mentor = p.match.people[pair.mentee], p.match.people[pair.mentor]
        w.writerow([p.match.cohort.slug, "mentee", mentee.name, mentee.email or "", mentee.matrix_id or "",
                    mentee.timezone or "", mentor.matrix_id or mentor.email or ""])
    return buf.getvalue()


async def propose_for_cli(settings: Settings, slug: str, *, clock: Clock | None = None) -> CliProposal:
    db = await open_database(settings.database.url)
    try:
        async with db.session() as s:
            found = await s.execute(select(Cohort).where(cohort_table.c.slug == slug.lower()))
            cohort = found.scalar_one_or_none()
            if cohort is None:
                raise HubError(f"there is no cohort {echo(slug)}")
            cm = await load_cohort_match(s, cohort, (clock or SystemClock()).now())
            return CliProposal(cm, propose(cm.input))
    finally:
        await db.close()
