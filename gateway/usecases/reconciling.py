"""Reconciliation with a partner (DESIGN.md section 7): the requester drives three phases, the responder answers.

Every message is a statement on the partner channel, signed, numbered and checked like a Proposal, and every
step runs in the transaction that takes the previous message in: a run survives a crash of either side at
any instant and goes on from where its last message left it. The requester keeps its progress in the run; the
responder keeps nothing but what it last saw of the requester's message log.

1. The requester sends its log head and asks for the responder's totals per group; groups that agree are
   consistent.
2. For the groups that disagree it asks for the nodes of the responder's tree that differ from its own, level
   by level, until the differing blocks are listed (`gateway.domain.reconciliation.compare_views`).
3. It asks for the responder's state of each transfer a differing block belongs to, and the log entries the
   responder holds for it with their inclusion proofs; its own go into the report beside them.

The report is signed and sent to the responder, which keeps it too; both sides freeze the differing blocks
until an operator resolves the run. Each message carries the sender's log head and a consistency proof from
the head the receiver saw last (RFC 9162 section 2.1.4): a partner whose log is not an extension of what it
showed before has rewritten its history, and the run says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from carbon_gateway.v1 import partner_pb2
from gateway import wire
from gateway.domain import merkle, ranges, text
from gateway.domain.blocks import SerialSpace
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.reconciliation import (
    DEPTH,
    Difference,
    GroupKey,
    NodeRef,
    NodeView,
    ReconciledBlock,
    Status,
    Totals,
    TransferView,
    classify,
    compare_views,
    listed_view,
    log_leaf,
    pair_differences,
    repeated_difference,
    should_list,
    status_of,
    view_of_state,
)
from gateway.domain.text import MAX_INT64, check_identifier, escaped
from gateway.domain.transfer import TransferRole, TransferState
from gateway.exchange import ENVELOPE_MARGIN_BYTES
from gateway.reconciliation_wire import (
    MAX_GROUPS,
    block_from_proto,
    difference_to_proto,
    group_from_proto,
    group_to_proto,
    head_from_proto,
    head_to_proto,
    proof_from_proto,
    ref_from_proto,
    ref_to_proto,
    totals_from_proto,
    totals_to_proto,
    view_from_proto,
    view_to_proto,
)
from gateway.store.base import BlockStatus, PartnerLogHead, ReconciliationRun, RunRole, SerialRange, Transaction
from gateway.usecases.base import GatewayBase, Idempotency, log
from signing import sign_envelope

REPORT_PAYLOAD_TYPE = "application/vnd.carbon-gateway.reconciliation-report.v1+protobuf"
"""The payload type of a signed report, as kept in the run and handed to a third party."""

MAX_DIFFERENCES = 10_000
"""Differing blocks one run follows to the block; beyond this the run stops at the totals."""
MAX_TRANSFERS_PER_REQUEST = 200
MAX_MESSAGES_PER_TRANSFER = 64
MAX_REFS_PER_REQUEST = 2_000
MAX_NODES_PER_RUN = 50_000
"""Tree nodes one run asks for at the most; a descent wider than this stops at the totals."""
MAX_FRESH_BLOCKS = 200_000
"""Blocks the differing buckets may hold in phase 3; beyond this the run stops at the totals."""
MAX_REQUESTS_PER_RUN = 500
"""Requests one run sends at the most: a partner answering a little at a time does not hold a run for days."""
ABANDON_AFTER = dt.timedelta(hours=1)
"""A run the partner has not finished answering after this long gives way to a new one."""

STALE_RUNS_AT_ONCE = 1000
"""The most stale runs one sweep closes; the next sweep closes the rest."""

PHASE_TOTALS = partner_pb2.RECONCILIATION_PHASE_TOTALS
PHASE_BLOCKS = partner_pb2.RECONCILIATION_PHASE_BLOCKS
PHASE_AUDIT = partner_pb2.RECONCILIATION_PHASE_AUDIT


@dataclass
class Progress:
    """The requester's state between two replies (kept in the run, as JSON)."""

    phase: int = PHASE_TOTALS
    asked: list[NodeRef] = field(default_factory=list)  # phase 2: the nodes asked in the last request
    pending: list[NodeRef] = field(default_factory=list)  # phase 2: nodes still to ask
    mine_only: list[ReconciledBlock] = field(default_factory=list)
    theirs_only: list[ReconciledBlock] = field(default_factory=list)
    repeated: list[tuple[ReconciledBlock, int, int]] = field(default_factory=list)
    groups: list[partner_pb2.GroupComparison] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)  # phase 3: transfers still to ask about
    evidence: dict[str, partner_pb2.TransferEvidence] = field(default_factory=dict)
    responder_head: tuple[int, bytes] = (0, merkle.EMPTY_ROOT)
    asked_from: tuple[int, bytes] = (0, merkle.EMPTY_ROOT)  # the responder's head the last request proves from
    buckets: list[NodeRef] = field(default_factory=list)  # phase 3: buckets of differing blocks still to ask
    fresh: dict[NodeRef, list[ReconciledBlock]] = field(default_factory=dict)  # phase 3: the responder's buckets
    states: dict[NodeRef, dict[str, int]] = field(default_factory=dict)
    """Phase 3: per bucket, the responder's state of each transfer asked with it, read in the same reply
    (0: the transfer is unknown there)."""
    requests: int = 0
    narrow: bool = False  # phase 3: the last reply had no room for a bucket: ask one at a time
    problem: str = ""  # the responder's log is not an extension of the head it showed before
    nodes_asked: int = 0

    def encode(self) -> bytes:
        """The progress as stored."""
        return json.dumps(
            {
                "phase": self.phase,
                "asked": [_ref_json(r) for r in self.asked],
                "pending": [_ref_json(r) for r in self.pending],
                "mine_only": [b.encode().hex() for b in self.mine_only],
                "theirs_only": [b.encode().hex() for b in self.theirs_only],
                "repeated": [[b.encode().hex(), m, t] for b, m, t in self.repeated],
                "groups": [g.SerializeToString().hex() for g in self.groups],
                "transfers": self.transfers,
                "evidence": {k: v.SerializeToString().hex() for k, v in self.evidence.items()},
                "responder_head": [self.responder_head[0], self.responder_head[1].hex()],
                "asked_from": [self.asked_from[0], self.asked_from[1].hex()],
                "buckets": [_ref_json(r) for r in self.buckets],
                "fresh": [[_ref_json(r), [b.encode().hex() for b in blocks]] for r, blocks in self.fresh.items()],
                "problem": self.problem,
                "states": [[_ref_json(r), states] for r, states in self.states.items()],
                "requests": self.requests,
                "narrow": self.narrow,
                "nodes_asked": self.nodes_asked,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Progress:
        """The inverse of `encode`."""
        raw = json.loads(data)
        groups = []
        for hexed in raw["groups"]:
            group = partner_pb2.GroupComparison()
            group.ParseFromString(bytes.fromhex(hexed))
            groups.append(group)
        evidence = {}
        for key, hexed in raw["evidence"].items():
            item = partner_pb2.TransferEvidence()
            item.ParseFromString(bytes.fromhex(hexed))
            evidence[key] = item
        return cls(
            phase=raw["phase"],
            asked=[_ref_from_json(r) for r in raw["asked"]],
            pending=[_ref_from_json(r) for r in raw["pending"]],
            mine_only=[ReconciledBlock.decode(bytes.fromhex(b)) for b in raw["mine_only"]],
            theirs_only=[ReconciledBlock.decode(bytes.fromhex(b)) for b in raw["theirs_only"]],
            repeated=[(ReconciledBlock.decode(bytes.fromhex(b)), m, t) for b, m, t in raw["repeated"]],
            groups=groups,
            transfers=raw["transfers"],
            evidence=evidence,
            responder_head=(raw["responder_head"][0], bytes.fromhex(raw["responder_head"][1])),
            asked_from=(raw["asked_from"][0], bytes.fromhex(raw["asked_from"][1])),
            buckets=[_ref_from_json(r) for r in raw["buckets"]],
            fresh={
                _ref_from_json(r): [ReconciledBlock.decode(bytes.fromhex(b)) for b in blocks]
                for r, blocks in raw["fresh"]
            },
            problem=raw["problem"],
            states={_ref_from_json(r): states for r, states in raw["states"]},
            requests=raw["requests"],
            narrow=raw["narrow"],
            nodes_asked=raw["nodes_asked"],
        )

    @property
    def found(self) -> int:
        """Differing blocks found so far."""
        return len(self.mine_only) + len(self.theirs_only) + len(self.repeated)

    def found_blocks(self) -> list[ReconciledBlock]:
        """Every differing block found in phase 2, on either side."""
        return [*self.mine_only, *self.theirs_only, *(b for b, _, _ in self.repeated)]


def _ref_json(ref: NodeRef) -> list[object]:
    return [ref.group.text(), ref.level, ref.prefix]


def _ref_from_json(raw: list[object]) -> NodeRef:
    text, level, prefix = raw
    assert isinstance(text, str) and isinstance(level, int) and isinstance(prefix, int)
    return NodeRef(GroupKey.from_text(text), level, prefix)


class ReplyProblem(Exception):
    """The partner's reply cannot be true or cannot be read: the run needs a person."""


class TooManyDifferences(Exception):
    """The trees differ too widely to descend: the run stops at the totals."""


class Reconciling(GatewayBase):
    """Reconciliation runs: started by an operator or the schedule, answered for partners, resolved by people."""

    # folding

    async def fold_trees(self, limit: int = 2_000) -> int:
        """Fold recent ledger changes into the reconciliation tree, then new log entries into the log's tree,
        each in its own transaction (a failure of one does not hold the other back); return how many ledger
        entries were folded. Nothing is written when nothing changed."""
        async with self.store.read() as tx:
            pending = await tx.reconciliation_pending()
            logged = await tx.log_tree_pending()
        folded = 0
        if pending:
            async with self.store.transaction() as tx:
                folded = await tx.fold_reconciliation(self.party, limit)
        if logged:
            async with self.store.transaction() as tx:
                await tx.fold_log_tree()
        return folded

    async def close_stale_runs(self) -> list[ReconciliationRun]:
        """Mark ABANDONED the runs a partner started here whose report never came (the partner abandoned its
        side), twice `ABANDON_AFTER` after their last step; return them."""
        now = self.clock()
        async with self.store.read() as tx:
            stale = await tx.running_reconciliations(RunRole.RESPONDER, now - 2 * ABANDON_AFTER, STALE_RUNS_AT_ONCE)
        closed = []
        for run in stale:
            async with self.store.transaction() as tx:
                current = await tx.get_reconciliation(run.run_id)
                if current is None or current.status is not Status.RUNNING:
                    continue
                current = replace(
                    current,
                    status=Status.ABANDONED,
                    detail=f"{run.partner} sent no report within {2 * ABANDON_AFTER} of its last request",
                    updated_at=now,
                )
                await tx.update_reconciliation(current)
                closed.append(current)
        return closed

    async def _fold_all(self, tx: Transaction) -> None:
        while await tx.fold_reconciliation(self.party, 50_000):
            pass

    # operator side

    async def start_reconciliation(self, idem: Idempotency, partner: str) -> ReconciliationRun:
        """Start a run with ``partner``: fold the trees, record the run and send the phase-1 request."""
        check_identifier(partner, "partner")
        if self._exchange.partners.get(partner) is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_PARTNER, f"{partner!r} is not a configured partner", field="partner"
            )
        async with self.store.transaction() as tx:
            replayed = await self._replay(tx, idem)
            if replayed is not None:
                found = await tx.get_reconciliation(replayed)
                assert found is not None
                return found
            now = self.clock()
            for run in await _running_here(tx, partner):
                if run.status is Status.RUNNING:
                    if now - run.updated_at < ABANDON_AFTER:
                        raise GatewayError(
                            ResponseCode.INVALID_STATE,
                            f"run {run.run_id} with {partner} is still waiting for {partner}'s answers (last step"
                            f" {run.updated_at:%Y-%m-%d %H:%M:%S} UTC); it gives way to a new run after"
                            f" {ABANDON_AFTER} without an answer",
                            field="partner",
                        )
                    await tx.update_reconciliation(
                        replace(
                            run,
                            status=Status.ABANDONED,
                            updated_at=now,
                            detail=f"{partner} did not answer within {ABANDON_AFTER}",
                        )
                    )
            await self._fold_all(tx)
            run = ReconciliationRun(
                run_id=self.new_id(),
                partner=partner,
                role=RunRole.REQUESTER,
                status=Status.RUNNING,
                snapshot_at=now,
                started_at=now,
                updated_at=now,
            )
            await tx.insert_reconciliation(run)
            await self._request(tx, run, Progress())
            await self._remember(tx, idem, run.run_id)
        return run

    async def reconcile_due(self, every: dt.timedelta, since: dt.datetime) -> list[ReconciliationRun]:
        """Start a run with each partner whose last run started ``every`` ago or longer, or, never reconciled,
        ``every`` after ``since`` (the gateway's start): the schedule."""
        started = []
        async with self.store.read() as tx:
            # The runs partners start here count among the latest runs with them: this side's runs still under
            # way are read by role and status, whatever their number.
            running = await _running_here(tx)
        for partner in sorted(self._exchange.partners.parties()):
            async with self.store.read() as tx:
                runs = await tx.list_reconciliations(partner, limit=1, role=RunRole.REQUESTER)
            runs += [r for r in running if r.partner == partner]
            latest = max((r.started_at for r in runs), default=since)
            if self.clock() - latest < every:
                continue
            idem = Idempotency(self.party, "schedule", f"{partner}:{self.clock().isoformat()}", "")
            try:
                started.append(await self.start_reconciliation(idem, partner))
            except GatewayError as exc:
                log.warning("the scheduled reconciliation with %s did not start: %s", partner, exc.message)
        return started

    async def get_reconciliation(self, run_id: str) -> ReconciliationRun:
        """One run; refuse an unknown ID."""
        async with self.store.read() as tx:
            run = await tx.get_reconciliation(run_id)
        if run is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_RECONCILIATION_RUN, f"no reconciliation run {run_id[:64]!r}", field="run_id"
            )
        return run

    async def list_reconciliations(self, partner: str = "", limit: int = 100) -> list[ReconciliationRun]:
        """The latest runs, newest first."""
        async with self.store.read() as tx:
            return await tx.list_reconciliations(partner, limit)

    async def resolve_reconciliation(self, idem: Idempotency, run_id: str, reason: str) -> ReconciliationRun:
        """Resolve a run's discrepancy with a reason a person gave: its blocks are no longer frozen."""
        reason = text.check_saying(reason.strip(), "reason", what="reason", why="the discrepancy is resolved")
        async with self.store.transaction() as tx:
            replayed = await self._replay(tx, idem)
            if replayed is not None:
                found = await tx.get_reconciliation(replayed)
                assert found is not None
                return found
            run = await tx.get_reconciliation(run_id)
            if run is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_RECONCILIATION_RUN, f"no reconciliation run {run_id[:64]!r}", field="run_id"
                )
            if not run.status.freezes and run.status is not Status.TOTALS_INCONSISTENT:
                raise GatewayError(
                    ResponseCode.INVALID_STATE,
                    f"run {run_id} is {run.status.name}: only an inconsistent run is resolved",
                    field="run_id",
                )
            now = self.clock()
            if run.status is Status.MANUAL_INTERVENTION_REQUIRED and _log_problem(run.partner, run.detail):
                # The person accepts the partner's message log as it is now: the next run checks from there.
                known = await tx.partner_log_head(run.partner)
                saw = known.partner_saw if known else 0
                await tx.set_partner_log_head(run.partner, PartnerLogHead(0, merkle.EMPTY_ROOT, now, saw))
            # Earlier unresolved runs with the partner are resolved with it when this run compared the blocks: it
            # is the latest word on them. A run that ended before (the partner refused to answer, or answered
            # what cannot be true) said nothing about their blocks, which stay frozen.
            for older in await tx.list_reconciliations(run.partner, limit=1000):
                unresolved = older.status.freezes or older.status is Status.TOTALS_INCONSISTENT
                earlier = older.started_at <= run.started_at and older.run_id != run_id
                if _compared_the_blocks(run) and unresolved and earlier and older.role is run.role:
                    await tx.update_reconciliation(
                        replace(
                            older,
                            status=Status.RESOLVED,
                            resolved_reason=f"resolved with run {run_id}: {reason}",
                            resolved_at=now,
                            updated_at=now,
                        )
                    )
                    await tx.unfreeze(older.run_id)
            run = replace(run, status=Status.RESOLVED, resolved_reason=reason, resolved_at=now, updated_at=now)
            await tx.update_reconciliation(run)
            await tx.unfreeze(run_id)
            await self._remember(tx, idem, run_id)
        log.warning("reconciliation run %s with %s resolved: %s", run_id, run.partner, reason)
        return run

    # the requester's messages

    async def _own_head(self, tx: Transaction) -> tuple[int, bytes]:
        size = await tx.fold_log_tree()
        nodes = await tx.log_tree_nodes(merkle.nodes_needed_for_root(size))
        return size, merkle.root_from_nodes(size, merkle.reader(nodes))

    async def _consistency(self, tx: Transaction, old: int, new: int) -> list[bytes]:
        if old <= 0 or old >= new:
            return []
        nodes = await tx.log_tree_nodes(merkle.nodes_needed_for_consistency(old, new))
        return merkle.consistency_proof(old, new, merkle.reader(nodes))

    async def _request(
        self,
        tx: Transaction,
        run: ReconciliationRun,
        progress: Progress,
        *,
        nodes: Sequence[NodeRef] = (),
        transfer_ids: Sequence[str] = (),
    ) -> None:
        """Keep the progress and send the request of its phase. The reply must prove the responder's log
        consistent from the head known now, which the progress keeps: a newer head learnt meanwhile (from a
        run the partner started) does not make an honest reply look rewritten."""
        request = await self._bare_request(tx, run, progress)
        progress.requests += 1
        await self._save(tx, run, progress)
        request.nodes.extend(ref_to_proto(r) for r in nodes)
        request.transfer_ids.extend(transfer_ids)
        await self._exchange.enqueue(tx, run.partner, reconciliation_request=request)

    async def _bare_request(
        self, tx: Transaction, run: ReconciliationRun, progress: Progress
    ) -> partner_pb2.ReconciliationRequest:
        """The request of the progress's phase without its nodes and transfers: this side's log head, and its
        consistency proof from the head the partner saw last."""
        size, root = await self._own_head(tx)
        known = await tx.partner_log_head(run.partner)
        partner_saw = known.partner_saw if known else 0
        progress.asked_from = (known.tree_size, known.root_hash) if known else (0, merkle.EMPTY_ROOT)
        return partner_pb2.ReconciliationRequest(
            run_id=run.run_id,
            phase=progress.phase,  # type: ignore[arg-type]
            snapshot_at=wire.timestamp(run.snapshot_at),
            head=head_to_proto(size, root),
            consistency_from=partner_saw if partner_saw <= size else 0,
            consistency_proof=await self._consistency(tx, partner_saw, size),
            seen_head_size=known.tree_size if known else 0,
        )

    async def _room(self, tx: Transaction, run: ReconciliationRun, progress: Progress) -> int:
        """Bytes the nodes and transfer IDs of the next request may take: the partner's envelope cap, less the
        header and the rest of the request. A request beyond the cap is refused by the partner for good."""
        return _budget(self, run.partner) - (await self._bare_request(tx, run, progress)).ByteSize()

    async def _on_reconciliation_reply(
        self, tx: Transaction, partner: str, reply: partner_pb2.ReconciliationReply
    ) -> None:
        run = await tx.get_reconciliation(reply.run_id)
        if run is None or run.partner != partner or run.role is not RunRole.REQUESTER:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"no reconciliation run {reply.run_id[:64]!r} with {partner} was started here",
                field="reconciliation_reply.run_id",
            )
        if run.status is not Status.RUNNING:
            log.info("a reply from %s for run %s, which is %s: ignored", partner, run.run_id, run.status.name)
            return
        progress = Progress.decode(run.progress)
        # This side's tree is compared as it is now: with the movements recorded since the run started.
        await self._fold_all(tx)
        try:
            if int(reply.refusal) != int(ResponseCode.OK):
                raise ReplyProblem(f"{partner} refused to answer: {escaped(reply.detail, 500)}")
            if reply.phase != progress.phase:
                raise ReplyProblem(f"{partner} answered phase {reply.phase} while phase {progress.phase} was asked")
            progress.responder_head = await self._check_reply_head(tx, partner, reply, progress)
            if reply.phase == PHASE_TOTALS:
                await self._take_totals(tx, run, progress, reply)
            elif reply.phase == PHASE_BLOCKS:
                await self._take_nodes(tx, run, progress, reply)
            else:
                await self._take_evidence(run, progress, reply)
        except (GatewayError, ReplyProblem) as exc:
            text = exc.message if isinstance(exc, GatewayError) else str(exc)
            await self._finish(tx, run, progress, Status.MANUAL_INTERVENTION_REQUIRED, text)
            return
        except TooManyDifferences as exc:
            await self._finish(tx, run, progress, Status.TOTALS_INCONSISTENT, str(exc))
            return
        await self._advance(tx, run, progress)

    async def _check_reply_head(
        self,
        tx: Transaction,
        partner: str,
        reply: partner_pb2.ReconciliationReply,
        progress: Progress,
    ) -> tuple[int, bytes]:
        """Check the responder's head against the one the request asked it to prove consistency from. A head
        that is not an extension of it is noted in the progress (the run goes on, so that the blocks are still
        compared, and ends asking for a person); a reply that cannot be read is a `ReplyProblem`."""
        size, root = head_from_proto(reply.head, "reconciliation_reply.head")
        proof = proof_from_proto(reply.consistency_proof, "reconciliation_reply.consistency_proof")
        asked_from = progress.asked_from
        if reply.consistency_from != asked_from[0]:
            raise ReplyProblem(
                f"{partner} proved its log consistent from {reply.consistency_from} entries, not from the"
                f" {asked_from[0]} it was asked"
            )
        known = await tx.partner_log_head(partner)
        shown = PartnerLogHead(asked_from[0], asked_from[1], known.seen_at if known else self.clock())
        problem = _rewritten(partner, shown, size, root, proof)
        saw = min(reply.seen_head_size, 2**62)
        if problem:
            progress.problem = progress.problem or problem
        elif not progress.problem and (known is None or size >= known.tree_size):
            await tx.set_partner_log_head(partner, PartnerLogHead(size, root, self.clock(), saw))
        elif not progress.problem and known is not None:
            # An older head than one learnt meanwhile: keep the newer, and note what the partner saw of ours.
            await tx.set_partner_log_head(partner, replace(known, partner_saw=saw))
        return size, root

    async def _take_totals(
        self, tx: Transaction, run: ReconciliationRun, progress: Progress, reply: partner_pb2.ReconciliationReply
    ) -> None:
        if len(reply.totals) > MAX_GROUPS:
            raise ReplyProblem(f"{run.partner} sent {len(reply.totals)} groups; at most {MAX_GROUPS} are compared")
        theirs: dict[GroupKey, Totals] = {}
        for i, item in enumerate(reply.totals):
            group = group_from_proto(item.group, f"reconciliation_reply.totals[{i}].group")
            if group in theirs:
                raise ReplyProblem(f"{run.partner} sent the totals of group {group} twice")
            theirs[group] = totals_from_proto(item.totals, f"reconciliation_reply.totals[{i}].totals")
        mine = await tx.reconciliation_totals(run.partner)
        empty = Totals()
        for group in sorted(set(mine) | set(theirs)):
            ours, others = mine.get(group, empty), theirs.get(group, empty)
            if ours != others:
                progress.groups.append(
                    partner_pb2.GroupComparison(
                        group=group_to_proto(group), requester=totals_to_proto(ours), responder=totals_to_proto(others)
                    )
                )
                progress.pending.append(NodeRef(group, 0, 0))
        progress.phase = PHASE_BLOCKS

    async def _own_view(self, tx: Transaction, partner: str, ref: NodeRef) -> NodeView:
        totals = (await tx.reconciliation_nodes(partner, [ref])).get(ref, Totals())
        if should_list(ref.level, totals):
            return listed_view(ref, await tx.reconciliation_blocks(partner, ref))
        return NodeView(ref, totals, children=await tx.reconciliation_children(partner, ref))

    async def _take_nodes(
        self, tx: Transaction, run: ReconciliationRun, progress: Progress, reply: partner_pb2.ReconciliationReply
    ) -> None:
        asked = set(progress.asked)
        answered: set[NodeRef] = set()
        for i, message in enumerate(reply.nodes):
            theirs = view_from_proto(message, f"reconciliation_reply.nodes[{i}]")
            if theirs.ref not in asked or theirs.ref in answered:
                raise ReplyProblem(f"{run.partner} answered for a node not asked: {theirs.ref}")
            answered.add(theirs.ref)
            queue = [(await self._own_view(tx, run.partner, theirs.ref), theirs)]
            while queue:
                mine, other = queue.pop()
                step = compare_views(mine, other)
                progress.mine_only.extend(step.mine_only)
                progress.theirs_only.extend(step.theirs_only)
                progress.repeated.extend(step.repeated)
                for child in step.descend:
                    if other.listed:
                        mine_child = (
                            mine.child_view(child) if mine.listed else await self._own_view(tx, run.partner, child)
                        )
                        queue.append((mine_child, other.child_view(child)))
                    else:
                        progress.pending.append(child)
        # Nodes the reply had no room for are asked again first.
        progress.pending = [r for r in progress.asked if r not in answered] + progress.pending
        if not answered and progress.asked:
            raise ReplyProblem(f"{run.partner} answered none of the {len(progress.asked)} nodes asked")
        progress.asked = []
        if progress.nodes_asked + len(progress.pending) > MAX_NODES_PER_RUN:
            raise TooManyDifferences(
                f"the trees differ in more than {MAX_NODES_PER_RUN} nodes: the run stops at the totals; compare"
                " the two ledgers with the partner directly"
            )

    async def _take_evidence(
        self, run: ReconciliationRun, progress: Progress, reply: partner_pb2.ReconciliationReply
    ) -> None:
        """Take the responder's audit trail of the transfers asked, then its buckets: a bucket counts only with
        the states of its transfers read in the same reply (the responder read both in one transaction). A bucket
        asked alone and left out ends the run: the responder has no room for it beside those states."""
        size, root = progress.responder_head
        asked_transfers = set(progress.transfers)
        answered: dict[str, int] = {}
        for i, item in enumerate(reply.transfers):
            if item.transfer_id not in asked_transfers or item.transfer_id in answered:
                raise ReplyProblem(f"{run.partner} answered for a transfer not asked: {item.transfer_id[:64]!r}")
            if len(item.messages) > MAX_MESSAGES_PER_TRANSFER:
                raise ReplyProblem(f"{run.partner} listed {len(item.messages)} messages for one transfer")
            for j, message in enumerate(item.messages):
                where = f"reconciliation_reply.transfers[{i}].messages[{j}]"
                if len(message.envelope_sha256) != 32:
                    raise ReplyProblem(f"{where}.envelope_sha256 is not 32 bytes")
                proof = proof_from_proto(message.inclusion_proof, f"{where}.inclusion_proof")
                leaf = merkle.leaf_hash(
                    log_leaf(message.direction, self.party, message.message_id, message.kind, message.envelope_sha256)
                )
                if message.log_index == 0 or not merkle.verify_inclusion(
                    message.log_index - 1, size, leaf, proof, root
                ):
                    raise ReplyProblem(
                        f"{run.partner} listed log entry {message.log_index} for transfer {item.transfer_id}, but it"
                        f" is not in the log head of {size} entries it signed"
                    )
            progress.evidence[item.transfer_id] = item
            known = item.known and item.state in TransferState._value2member_map_
            answered[item.transfer_id] = int(item.state) if known else 0
        asked_buckets = set(progress.asked)
        fresh_blocks = sum(len(b) for b in progress.fresh.values())
        found = progress.found_blocks()
        for i, node in enumerate(reply.nodes):
            view = view_from_proto(node, f"reconciliation_reply.nodes[{i}]")
            if view.ref not in asked_buckets or view.ref in progress.fresh or view.blocks is None:
                raise ReplyProblem(f"{run.partner} answered for a bucket not asked: {view.ref}")
            if any(view.ref.holds(b) and b.transfer_id not in answered for b in found):
                continue  # its transfers' states did not fit beside it: asked again, together
            fresh_blocks += len(view.blocks)
            if fresh_blocks > MAX_FRESH_BLOCKS:
                raise TooManyDifferences(
                    f"the differing buckets hold more than {MAX_FRESH_BLOCKS} blocks: the run stops at the totals"
                )
            progress.fresh[view.ref] = list(view.blocks)
            progress.states[view.ref] = answered
        if not reply.transfers and not reply.nodes:
            raise ReplyProblem(f"{run.partner} answered none of the buckets and transfers asked")
        if len(progress.asked) == 1 and progress.asked[0] not in progress.fresh:
            # Asked again, the bucket would go with the same transfers, and get the same answer.
            raise GatewayError(
                ResponseCode.ENVELOPE_TOO_LARGE,
                f"{run.partner} left out {_bucket_name(progress.asked[0])}, asked alone with the states of its"
                f" {len(progress.transfers)} transfers: its reply to {self.party} has no room for them together."
                " Raise the envelope cap both sides configure for each other (max_envelope_bytes)",
            )
        progress.narrow = not any(r in progress.fresh for r in progress.asked)
        progress.buckets = [r for r in progress.asked if r not in progress.fresh] + progress.buckets
        progress.asked = []
        progress.transfers = []

    async def _advance(self, tx: Transaction, run: ReconciliationRun, progress: Progress) -> None:
        """Send the next request, or finish the run."""
        if progress.requests >= MAX_REQUESTS_PER_RUN:
            await self._finish(
                tx,
                run,
                progress,
                Status.MANUAL_INTERVENTION_REQUIRED,
                f"{run.partner} needed more than {MAX_REQUESTS_PER_RUN} requests to answer this run: its size cap"
                f" ({_cap(self, run.partner)} bytes, [[partners]] max_envelope_bytes) lets few nodes into one request,"
                " or it answers a little at a time; compare the two ledgers with the partner directly, or agree on"
                " a larger cap",
            )
            return
        if progress.found > MAX_DIFFERENCES:
            await self._finish(
                tx,
                run,
                progress,
                Status.TOTALS_INCONSISTENT,
                f"more than {MAX_DIFFERENCES} blocks differ: the run stops at the totals; compare the two ledgers"
                " with the partner directly",
            )
            return
        if progress.phase == PHASE_BLOCKS:
            if progress.pending:
                # As many nodes as the partner's envelope cap has room for; the rest go in the next request.
                room, taken, count = await self._room(tx, run, progress), 0, 0
                for ref in progress.pending[:MAX_REFS_PER_REQUEST]:
                    size = _framed(ref_to_proto(ref).ByteSize())
                    if count and taken + size > room:
                        break
                    count += 1
                    taken += size
                if taken > room:
                    await self._too_small_to_ask(tx, run, progress, f"the node {progress.pending[0]}", taken, room)
                    return
                progress.asked = progress.pending[:count]
                progress.pending = progress.pending[count:]
                progress.nodes_asked += len(progress.asked)
                await self._request(tx, run, progress, nodes=progress.asked)
                return
            found = progress.found_blocks()
            progress.buckets = sorted({NodeRef(b.group, DEPTH, b.bucket) for b in found})
            progress.phase = PHASE_AUDIT
        if progress.phase == PHASE_AUDIT and progress.buckets:
            # Each bucket goes with the transfers of its differing blocks, so both are read in one transaction.
            found = progress.found_blocks()
            by_bucket: dict[NodeRef, set[str]] = {}
            for block in found:
                by_bucket.setdefault(NodeRef(block.group, DEPTH, block.bucket), set()).add(block.transfer_id)
            asked: list[NodeRef] = []
            transfers: dict[str, None] = {}  # in the order of the buckets: the responder answers the first first
            room, taken = await self._room(tx, run, progress), 0
            for ref in progress.buckets:
                wanted = dict.fromkeys(sorted(by_bucket.get(ref, set())))
                if len(wanted) > MAX_TRANSFERS_PER_REQUEST:
                    # The partner refuses a request naming that many, and the bucket counts only read with them all.
                    await self._finish(
                        tx,
                        run,
                        progress,
                        Status.TOTALS_INCONSISTENT,
                        f"{_bucket_name(ref)} holds differing blocks of {len(wanted)} transfers, and one request"
                        f" may ask {run.partner} for the states of {MAX_TRANSFERS_PER_REQUEST} at the most: the run"
                        " stops at the totals; compare the two ledgers with the partner directly",
                    )
                    return
                most = 1 if progress.narrow else MAX_REFS_PER_REQUEST  # the last reply had room for none
                # The bucket and the transfers it adds, as the request carries them: within the partner's cap.
                size = _framed(ref_to_proto(ref).ByteSize()) + sum(
                    _framed(len(t.encode())) for t in wanted if t not in transfers
                )
                full = len(asked) >= most or len(transfers | wanted) > MAX_TRANSFERS_PER_REQUEST or taken + size > room
                if asked and full:
                    break
                asked.append(ref)
                transfers |= wanted
                taken += size
            if taken > room:
                what = f"{_bucket_name(asked[0])} with the IDs of its {len(transfers)} transfers"
                await self._too_small_to_ask(tx, run, progress, what, taken, room)
                return
            progress.asked = asked
            progress.buckets = progress.buckets[len(asked) :]
            progress.transfers = list(transfers)
            await self._request(tx, run, progress, nodes=asked, transfer_ids=progress.transfers)
            return
        await self._finish(tx, run, progress, None, "")

    async def _too_small_to_ask(
        self, tx: Transaction, run: ReconciliationRun, progress: Progress, what: str, size: int, room: int
    ) -> None:
        """End the run for a person: the partner's envelope cap has no room for the smallest request left."""
        detail = (
            f"{what} takes {size} bytes in a request and {run.partner} takes envelopes with room for {room} (its"
            " cap, less the header and this side's log head): raise the cap both sides configure for each other"
            " (max_envelope_bytes)"
        )
        await self._finish(tx, run, progress, Status.MANUAL_INTERVENTION_REQUIRED, detail)

    async def _confirmed(self, tx: Transaction, run: ReconciliationRun, progress: Progress) -> list[Difference]:
        """The differences phase 2 found, compared again bucket by bucket as both sides hold them now: each side
        read its bucket and its transfer states in one transaction, so a movement recorded meanwhile is no
        difference, and one still on its way shows as a transfer still open."""
        mine_only: list[ReconciledBlock] = []
        theirs_only: list[ReconciledBlock] = []
        repeated: list[tuple[ReconciledBlock, int, int]] = []
        for ref, theirs in sorted(progress.fresh.items()):
            step = compare_views(
                listed_view(ref, await tx.reconciliation_blocks(run.partner, ref)), listed_view(ref, theirs)
            )
            mine_only.extend(step.mine_only)
            theirs_only.extend(step.theirs_only)
            repeated.extend(step.repeated)
        if len(mine_only) + len(theirs_only) + len(repeated) > MAX_DIFFERENCES:
            raise TooManyDifferences(f"more than {MAX_DIFFERENCES} blocks differ: the run stops at the totals")
        differences = pair_differences(mine_only, theirs_only)
        return differences + [repeated_difference(b, m, t) for b, m, t in repeated]

    async def _save(self, tx: Transaction, run: ReconciliationRun, progress: Progress) -> None:
        await tx.update_reconciliation(replace(run, progress=progress.encode(), updated_at=self.clock()))

    async def _transfer_view(self, tx: Transaction, transfer_id: str, partner: str) -> TransferView:
        transfer = await tx.get_transfer(transfer_id)
        if transfer is None or transfer.partner != partner:
            return TransferView.UNKNOWN
        return view_of_state(transfer.state)

    async def _finish(
        self,
        tx: Transaction,
        run: ReconciliationRun,
        progress: Progress,
        status: Status | None,
        detail: str,
    ) -> None:
        """Classify the differences, freeze their blocks, sign the report, keep it and send it."""
        size, root = await self._own_head(tx)
        differences: list[Difference] = []
        if status is None:
            try:
                differences = await self._confirmed(tx, run, progress)
            except TooManyDifferences as exc:
                status, detail = Status.TOTALS_INCONSISTENT, str(exc)
        kept: list[Difference] = []
        in_flight: set[str] = set()
        for difference in differences:
            # The responder's state of the transfer, as read with the bucket(s) the difference lies in. A transfer
            # not asked with its bucket (it moved after phase 2) or read with two buckets apart is compared again
            # next time, not reported.
            seen = {
                progress.states.get(NodeRef(b.group, DEPTH, b.bucket), {}).get(difference.transfer_id)
                for b in difference.blocks
            }
            if None in seen or len(seen) != 1:
                in_flight.add(difference.transfer_id)
                continue
            (state,) = seen
            assert state is not None
            their_view = view_of_state(TransferState(state)) if state else TransferView.UNKNOWN
            classified = classify(
                difference, await self._transfer_view(tx, difference.transfer_id, run.partner), their_view
            )
            if classified is None:
                in_flight.add(difference.transfer_id)
            else:
                kept.append(classified)
        if status is None:
            status = status_of(kept)
        if progress.problem and status is not Status.MANUAL_INTERVENTION_REQUIRED:
            status, detail = Status.MANUAL_INTERVENTION_REQUIRED, progress.problem
        report = partner_pb2.ReconciliationReport(
            run_id=run.run_id,
            requester=self.party,
            responder=run.partner,
            snapshot_at=wire.timestamp(run.snapshot_at),
            status=int(status),  # type: ignore[arg-type]
            detail=detail,
            groups=progress.groups,
            in_flight=sorted(in_flight),
            requester_head=head_to_proto(size, root),
            responder_head=head_to_proto(*progress.responder_head),
            finished_at=wire.timestamp(self.clock()),
        )
        for difference in kept:
            item = difference_to_proto(difference)
            item.requester_evidence.CopyFrom(await self._evidence(tx, difference.transfer_id, run.partner, size))
            theirs = progress.evidence.get(difference.transfer_id)
            if theirs is not None:
                item.responder_evidence.CopyFrom(theirs)
            report.differences.append(item)
        known = await tx.partner_log_head(run.partner)
        partner_saw = known.partner_saw if known else 0
        report.consistency_from = partner_saw if partner_saw <= size else 0
        report.consistency_proof.extend(await self._consistency(tx, partner_saw, size))
        self._fit_report(run.partner, report)
        if status.freezes:
            await tx.freeze(run.run_id, await _freezable(tx, run.partner, [b for d in kept for b in d.blocks]))
        signed = sign_envelope(REPORT_PAYLOAD_TYPE, report.SerializeToString(), [self._exchange.signer])
        now = self.clock()
        await tx.update_reconciliation(
            replace(run, status=status, detail=detail, progress=b"", report=signed.to_json(), updated_at=now)
        )
        await self._exchange.enqueue(tx, run.partner, reconciliation_report=report)
        if status is not Status.CONSISTENT:
            log.warning("reconciliation run %s with %s: %s %s", run.run_id, run.partner, status.name, detail)

    def _fit_report(self, partner: str, report: partner_pb2.ReconciliationReport) -> None:
        """Leave out what the partner's size cap has no room for: first transfers in flight (no differences; the
        detail says how many), then differences (the count says how many)."""
        budget = _budget(self, partner)
        over = report.ByteSize() - budget
        if over > 0 and report.in_flight:
            over += 2 * len(IN_FLIGHT_LEFT_OUT) + 8  # room for the note and the detail's length growing
            kept = len(report.in_flight)
            while kept and over > 0:
                kept -= 1
                over -= _framed(len(report.in_flight[kept].encode()))
            note = IN_FLIGHT_LEFT_OUT.format(len(report.in_flight) - kept)
            del report.in_flight[kept:]
            report.detail = f"{report.detail}; {note}" if report.detail else note
            over = report.ByteSize() - budget
        while report.differences and over > 0:
            over -= report.differences[-1].ByteSize() + 4
            report.differences.pop()
            report.differences_omitted += 1
        while report.groups and report.ByteSize() > budget:
            report.groups.pop()

    async def _evidence(
        self, tx: Transaction, transfer_id: str, partner: str, size: int
    ) -> partner_pb2.TransferEvidence:
        """This side's state of a transfer with ``partner`` and the log entries it holds for it, with their
        inclusion proofs against its log head of ``size`` entries."""
        transfer = await tx.get_transfer(transfer_id)
        evidence = partner_pb2.TransferEvidence(transfer_id=transfer_id)
        if transfer is None or transfer.partner != partner:
            return evidence
        evidence.known = True
        evidence.state = int(transfer.state)  # type: ignore[assignment]
        entries = [e for e in await tx.log_of_transfer(transfer_id) if e.peer == partner and e.index <= size]
        evidence.messages_omitted = max(0, len(entries) - MAX_MESSAGES_PER_TRANSFER)
        for entry in entries[:MAX_MESSAGES_PER_TRANSFER]:
            nodes = await tx.log_tree_nodes(merkle.nodes_needed_for_inclusion(entry.index - 1, size))
            evidence.messages.append(
                partner_pb2.LoggedMessage(
                    log_index=entry.index,
                    direction=entry.direction,
                    kind=entry.kind.value,
                    message_id=entry.message_id,
                    envelope_sha256=hashlib.sha256(entry.envelope).digest(),
                    inclusion_proof=merkle.inclusion_proof(entry.index - 1, size, merkle.reader(nodes)),
                    recorded_at=wire.timestamp(entry.recorded_at),
                )
            )
        return evidence

    # the responder

    async def _on_reconciliation_request(
        self, tx: Transaction, partner: str, request: partner_pb2.ReconciliationRequest
    ) -> None:
        """Answer a request from ``partner``. Whatever goes wrong is answered with a refusal (the response code
        and what went wrong), so the requester's run ends instead of waiting."""
        reply = partner_pb2.ReconciliationReply(run_id=request.run_id[:128], phase=request.phase)
        try:
            async with tx.savepoint():
                await self._answer(tx, partner, request, reply)
        except Exception as exc:
            if self.store.is_transient(exc):
                # The database could not do it now: nothing is taken in, and the requester's statement comes again.
                # Refused, its run would end for a person over a lock wait or a lost connection.
                raise
            refusal = exc if isinstance(exc, GatewayError) else None
            if refusal is None:
                log.exception("answering %s's reconciliation request %s failed", partner, request.run_id[:64])
                refusal = GatewayError(
                    ResponseCode.INTERNAL_ERROR,
                    f"{self.party} failed while answering; its operator finds why in its log"
                    f" ({exc.__class__.__name__})",
                )
            for name in ("totals", "nodes", "transfers", "consistency_proof"):
                del getattr(reply, name)[:]
            reply.refusal = refusal.code  # type: ignore[assignment]
            where = f" (field {refusal.field})" if refusal.field else ""
            reply.detail = (refusal.message[:1000] + where)[:1200]
        known = await tx.partner_log_head(partner)
        reply.seen_head_size = known.tree_size if known else 0
        await self._exchange.enqueue(tx, partner, reconciliation_reply=reply)

    async def _answer(
        self,
        tx: Transaction,
        partner: str,
        request: partner_pb2.ReconciliationRequest,
        reply: partner_pb2.ReconciliationReply,
    ) -> None:
        await self._fold_all(tx)
        size, root = await self._own_head(tx)
        reply.head.CopyFrom(head_to_proto(size, root))
        reply.consistency_from = request.seen_head_size if request.seen_head_size <= size else 0
        reply.consistency_proof.extend(await self._consistency(tx, reply.consistency_from, size))
        check_identifier(request.run_id, "reconciliation_request.run_id")
        await self._note_requester(tx, partner, request)
        if request.phase == PHASE_TOTALS:
            totals = await tx.reconciliation_totals(partner)
            reply.totals.extend(
                partner_pb2.GroupTotals(group=group_to_proto(g), totals=totals_to_proto(t))
                for g, t in sorted(totals.items())
            )
            if reply.ByteSize() > _budget(self, partner):
                raise GatewayError(
                    ResponseCode.ENVELOPE_TOO_LARGE,
                    f"the totals of {len(totals)} groups do not fit in one message to {partner}",
                )
        elif request.phase == PHASE_BLOCKS:
            await self._answer_nodes(tx, partner, request, reply)
        elif request.phase == PHASE_AUDIT:
            _check_audit_request(request)
            if len(request.nodes) == 1:
                # The requester takes a bucket only with the states of all the transfers asked with it, and asks
                # one alone when a reply had no room for more: this answer holds them all, or none can.
                await self._answer_lone_bucket(tx, partner, request, reply, size)
            else:
                # The transfers first, then the buckets that fit beside them: both read in this one transaction.
                await self._answer_transfers(tx, partner, request, reply, size)
                await self._answer_nodes(tx, partner, request, reply)
        else:
            raise GatewayError(
                ResponseCode.MALFORMED_PAYLOAD,
                f"unknown phase {request.phase}",
                field="reconciliation_request.phase",
            )

    async def _note_requester(self, tx: Transaction, partner: str, request: partner_pb2.ReconciliationRequest) -> None:
        """Check the requester's log head against the one it showed last, and keep the run on this side."""
        size, root = head_from_proto(request.head, "reconciliation_request.head")
        proof = proof_from_proto(request.consistency_proof, "reconciliation_request.consistency_proof")
        now = self.clock()
        run = await tx.get_reconciliation(request.run_id)
        if run is not None and (run.partner != partner or run.role is not RunRole.RESPONDER):
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                "the run ID belongs to another run",
                field="reconciliation_request.run_id",
            )
        if run is not None:
            _check_open_for_the_requester(run, "reconciliation_request.run_id")
        if run is None:
            snapshot = (
                wire.from_timestamp(request.snapshot_at, "reconciliation_request.snapshot_at")
                if request.HasField("snapshot_at")
                else now
            )
            run = ReconciliationRun(
                run_id=request.run_id,
                partner=partner,
                role=RunRole.RESPONDER,
                status=Status.RUNNING,
                snapshot_at=snapshot,
                started_at=now,
                updated_at=now,
            )
            await tx.insert_reconciliation(run)
        elif run.status in (Status.RUNNING, Status.ABANDONED) and not run.report:
            run = replace(run, status=Status.RUNNING, updated_at=now)
            await tx.update_reconciliation(run)
        problem = await self._check_requester_head(
            tx, partner, size, root, request.consistency_from, proof, "reconciliation_request.consistency_from"
        )
        if problem:
            if run.status is Status.RUNNING or run.status is Status.CONSISTENT:
                await tx.update_reconciliation(
                    replace(run, status=Status.MANUAL_INTERVENTION_REQUIRED, detail=problem, updated_at=now)
                )
            log.error("%s", problem)

    async def _check_requester_head(
        self,
        tx: Transaction,
        partner: str,
        size: int,
        root: bytes,
        consistency_from: int,
        proof: list[bytes],
        field: str,
    ) -> str:
        """Why the requester's head cannot be trusted (empty when it can), and keep it when it can.

        The proof must start from a head the requester showed here before, whichever: with runs in both
        directions it may not be the latest. A requester that names none (it learns from this side's answers
        which head this side saw) proves nothing yet. ``consistency_from`` (at ``field``) beyond 64-bit signed
        integers, which no log reaches, is refused as malformed."""
        if consistency_from > MAX_INT64:
            raise GatewayError(
                ResponseCode.MALFORMED_PAYLOAD, f"{field}: {consistency_from} is beyond 2**63 - 1", field=field
            )
        known = await tx.partner_log_head(partner)
        now = self.clock()
        if known is None or known.tree_size == 0:
            await tx.set_partner_log_head(partner, PartnerLogHead(size, root, now, known.partner_saw if known else 0))
            return ""
        if consistency_from == 0:
            # The requester knows of no head this side saw: honest when this side's last answer to it showed none
            # (an answer delayed past later runs), so it is not held against it.
            return ""
        root_then = await tx.partner_log_root(partner, consistency_from)
        if root_then is None:
            return (
                f"{partner} proved its message log consistent from a head of {consistency_from} entries it never"
                " showed here; compare both sides' message logs before trusting either"
            )
        problem = _rewritten(partner, PartnerLogHead(consistency_from, root_then, known.seen_at), size, root, proof)
        if not problem and size >= known.tree_size:
            await tx.set_partner_log_head(partner, PartnerLogHead(size, root, now, known.partner_saw))
        return problem

    async def _answer_nodes(
        self,
        tx: Transaction,
        partner: str,
        request: partner_pb2.ReconciliationRequest,
        reply: partner_pb2.ReconciliationReply,
    ) -> None:
        if len(request.nodes) > MAX_REFS_PER_REQUEST:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"more than {MAX_REFS_PER_REQUEST} nodes asked at once",
                field="reconciliation_request.nodes",
            )
        budget = _budget(self, partner)
        for i, message in enumerate(request.nodes):
            ref = ref_from_proto(message, f"reconciliation_request.nodes[{i}]")
            view = view_to_proto(await self._own_view(tx, partner, ref))
            if reply.ByteSize() + view.ByteSize() + 16 > budget and not reply.nodes:
                # Phase 3: a transfer's state matters more than its listed messages; make room for one bucket.
                for evidence in reversed(reply.transfers):
                    while evidence.messages and reply.ByteSize() + view.ByteSize() + 16 > budget:
                        evidence.messages.pop()
                        evidence.messages_omitted += 1
            if reply.ByteSize() + view.ByteSize() + 16 > budget:
                if reply.nodes or reply.transfers:
                    break  # the requester asks again for the rest
                raise _too_small(partner, "one node of the tree", view.ByteSize(), budget)
            reply.nodes.append(view)

    async def _answer_transfers(
        self,
        tx: Transaction,
        partner: str,
        request: partner_pb2.ReconciliationRequest,
        reply: partner_pb2.ReconciliationReply,
        size: int,
    ) -> None:
        budget = _budget(self, partner)
        for transfer_id in request.transfer_ids:
            evidence = await self._evidence(tx, transfer_id, partner, size)
            if reply.ByteSize() + evidence.ByteSize() + 16 > budget:
                # A transfer's state matters more than its listed messages, and the requester takes a bucket only
                # with the states of all its transfers in the same reply: this transfer's last messages are left
                # out, and counted, to fit the room left. The requester asks again for what still does not fit.
                _leave_out_messages(evidence, budget - 16 - reply.ByteSize())
                if reply.ByteSize() + evidence.ByteSize() + 16 > budget:
                    if reply.transfers:
                        break
                    raise _too_small(partner, "the audit trail of one transfer", evidence.ByteSize(), budget)
            reply.transfers.append(evidence)

    async def _answer_lone_bucket(
        self,
        tx: Transaction,
        partner: str,
        request: partner_pb2.ReconciliationRequest,
        reply: partner_pb2.ReconciliationReply,
        size: int,
    ) -> None:
        """Answer a bucket asked alone with the states of all its transfers: every state with its listed messages
        left out, the bucket, then each transfer's messages back in order while they fit. Refused with
        `ENVELOPE_TOO_LARGE` when the bare states and the bucket alone do not fit: the requester would only ask
        the very same again."""
        budget = _budget(self, partner)
        ref = ref_from_proto(request.nodes[0], "reconciliation_request.nodes[0]")
        listed: list[list[partner_pb2.LoggedMessage]] = []
        for transfer_id in request.transfer_ids:
            evidence = await self._evidence(tx, transfer_id, partner, size)
            listed.append(list(evidence.messages))
            evidence.messages_omitted += len(evidence.messages)
            del evidence.messages[:]
            reply.transfers.append(evidence)
        reply.nodes.append(view_to_proto(await self._own_view(tx, partner, ref)))
        taken = reply.ByteSize()
        if taken > budget:
            raise _too_small(
                partner,
                f"{_bucket_name(ref)} with the states of its {len(request.transfer_ids)} transfers",
                taken,
                budget,
            )
        for evidence, messages in zip(reply.transfers, listed, strict=True):
            for message in messages:
                # A message, its tag and length, and the evidence's own length growing by up to two bytes.
                more = _framed(message.ByteSize()) + 2
                if taken + more > budget:
                    return
                evidence.messages.append(message)
                evidence.messages_omitted -= 1
                taken += more

    async def _on_reconciliation_report(
        self, tx: Transaction, partner: str, report: partner_pb2.ReconciliationReport
    ) -> None:
        """Keep the requester's report and freeze the blocks it names on this side too."""
        check_identifier(report.run_id, "reconciliation_report.run_id")
        if report.requester != partner or report.responder != self.party:
            side = "requester" if report.requester != partner else "responder"
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"a report from {partner} names {report.requester[:16]!r} and {report.responder[:16]!r} as its sides",
                field=f"reconciliation_report.{side}",
            )
        if report.status not in Status._value2member_map_ or Status(report.status) not in REPORTED_RESULTS:
            # RESOLVED and ABANDONED are this side's own decisions about its run, never the partner's.
            raise GatewayError(
                ResponseCode.MALFORMED_PAYLOAD,
                f"status {report.status} is not a result a requester reports",
                field="reconciliation_report.status",
            )
        status = Status(report.status)
        if len(report.differences) > MAX_DIFFERENCES:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"the report lists {len(report.differences)} differences; a run lists at most {MAX_DIFFERENCES}",
                field="reconciliation_report.differences",
            )
        blocks = []
        for i, difference in enumerate(report.differences):
            for j, block in enumerate([*difference.requester_blocks, *difference.responder_blocks]):
                blocks.append(block_from_proto(block, f"reconciliation_report.differences[{i}].blocks[{j}]"))
        now = self.clock()
        run = await tx.get_reconciliation(report.run_id)
        if run is None or run.partner != partner or run.role is not RunRole.RESPONDER:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"no reconciliation run {report.run_id[:64]!r} of {partner}'s was answered here",
                field="reconciliation_report.run_id",
            )
        _check_open_for_the_requester(run, "reconciliation_report.run_id")
        detail = f"{partner} reports: {escaped(report.detail, 2000)}" if report.detail else ""
        if run.status is Status.MANUAL_INTERVENTION_REQUIRED:
            status, detail = run.status, run.detail  # this side found the requester's log rewritten
        else:
            head = head_from_proto(report.requester_head, "reconciliation_report.requester_head")
            proof = proof_from_proto(report.consistency_proof, "reconciliation_report.consistency_proof")
            problem = await self._check_requester_head(
                tx, partner, head[0], head[1], report.consistency_from, proof, "reconciliation_report.consistency_from"
            )
            if problem:
                status, detail = Status.MANUAL_INTERVENTION_REQUIRED, problem
        if status.freezes:
            await tx.freeze(run.run_id, await _freezable(tx, partner, blocks))
        await tx.update_reconciliation(
            replace(run, status=status, detail=detail, report=report.SerializeToString(), updated_at=now)
        )
        if status is not Status.CONSISTENT:
            log.warning("%s reports reconciliation run %s %s: %s", partner, run.run_id, status.name, detail)


IN_FLIGHT_LEFT_OUT = "{} more transfers in flight left out for lack of room (compared next time)"
"""The note a report's detail carries when the partner's size cap has no room for every transfer in flight."""

REPORTED_RESULTS = frozenset(
    {Status.CONSISTENT, Status.TOTALS_INCONSISTENT, Status.BLOCKS_INCONSISTENT, Status.MANUAL_INTERVENTION_REQUIRED}
)
"""The statuses a requester's report may carry: the results of a run."""


RUNNING_AT_ONCE = 10_000
"""The most runs this side started that `_running_here` reads: one at a time per partner, and a few more after a
crash or beside a replica."""


async def _running_here(tx: Transaction, partner: str = "") -> list[ReconciliationRun]:
    """The runs this side started that are still running (with ``partner`` when given), read by their role and
    status: not among the latest runs with the partner, which the runs the partner starts here (as many as it
    likes) would push out of sight."""
    running = await tx.running_reconciliations(RunRole.REQUESTER, _END_OF_TIME, RUNNING_AT_ONCE)
    return [r for r in running if r.partner == partner or not partner]


_END_OF_TIME = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


def _check_open_for_the_requester(run: ReconciliationRun, field: str) -> None:
    """Refuse a request or a report for a responder's run that already has its report, or that an operator
    resolved: what was decided about it stays decided, and a new run takes a new ID."""
    if run.report or run.status is Status.RESOLVED:
        said = "already has its report" if run.report else "was resolved by an operator"
        raise GatewayError(
            ResponseCode.INVALID_STATE,
            f"run {run.run_id} {said} ({run.status.name}); a new run takes a new ID",
            field=field,
        )


def _budget(gateway: Reconciling, partner: str) -> int:
    """Bytes a reconciliation body may take to ``partner``: its envelope cap (statements travel in protobuf
    form), less the room kept for the header and for the envelope's payload type, key ID and signature, and
    for the requester's log head size, which a reply gets once answered (a tag and up to ten bytes)."""
    return _cap(gateway, partner) - ENVELOPE_MARGIN_BYTES - 512 - 11


def _cap(gateway: Reconciling, partner: str) -> int:
    """The envelope size cap ``partner`` declares in this gateway's configuration."""
    found = gateway._exchange.partners.get(partner)
    return found.max_envelope_bytes if found else 1 << 20


def _check_audit_request(request: partner_pb2.ReconciliationRequest) -> None:
    """An audit request names buckets and transfers, each once, as the requester sends them: a node above the
    buckets or one named twice would only make the answer larger, and is refused, as are more transfers than
    one request may name and a transfer ID that is not an identifier."""
    if len(request.transfer_ids) > MAX_TRANSFERS_PER_REQUEST:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"more than {MAX_TRANSFERS_PER_REQUEST} transfers asked at once",
            field="reconciliation_request.transfer_ids",
        )
    nodes: set[NodeRef] = set()
    for i, message in enumerate(request.nodes[: MAX_REFS_PER_REQUEST + 1]):
        field = f"reconciliation_request.nodes[{i}]"
        ref = ref_from_proto(message, field)
        if ref.level != DEPTH:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"the audit phase asks for buckets (level {DEPTH} of the tree), not a node of level {ref.level}",
                field=field,
            )
        if ref in nodes:
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, "a bucket is asked twice", field=field)
        nodes.add(ref)
    transfers: set[str] = set()
    for i, transfer_id in enumerate(request.transfer_ids):
        check_identifier(transfer_id, f"reconciliation_request.transfer_ids[{i}]")
        if transfer_id in transfers:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                "a transfer is asked twice",
                field=f"reconciliation_request.transfer_ids[{i}]",
            )
        transfers.add(transfer_id)


NOTHING_MOVED = frozenset({TransferState.REJECTED, TransferState.CANCELLED, TransferState.TERMINATED})
"""The final states of a transfer whose units stayed with the initiating side."""

STILL_HERE = {
    TransferRole.INITIATING: (BlockStatus.RESERVED, BlockStatus.DEBITED),
    TransferRole.ACQUIRING: (BlockStatus.HELD, BlockStatus.PENDING),
}
"""The blocks of a transfer whose units stayed home that would say otherwise, if this side's records disagreed."""


async def _freezable(
    tx: Transaction, partner: str, blocks: Sequence[ReconciledBlock]
) -> list[tuple[SerialSpace, int, int]]:
    """The ranges to freeze here for ``blocks``: only what this side's own record of each block's transfer with
    ``partner`` moved (`_moved_here`). A partner's answer or report cannot freeze units that never passed
    between the two. The transfers are read together, and each one's blocks met with the claimed ranges in one
    pass: a report may name ten thousand transfers and tens of thousands of blocks."""
    claimed: dict[str, dict[SerialSpace, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for block in blocks:
        claimed[block.transfer_id][block.space].append((block.serial_start, block.serial_end))
    found: list[tuple[SerialSpace, int, int]] = []
    for transfer_id, own_ranges in (await _moved_here(tx, partner, list(claimed))).items():
        moved: dict[SerialSpace, list[tuple[int, int]]] = defaultdict(list)
        for space, start, end in own_ranges:
            moved[space].append((start, end))
        for space, wanted in claimed[transfer_id].items():
            if space in moved:
                found.extend((space, start, end) for start, end in ranges.intersection(moved[space], wanted))
    return sorted(set(found), key=lambda r: (r[0].unit_kind, r[0].issuing_registry, r[0].issuance, r[1], r[2]))


async def _moved_here(tx: Transaction, partner: str, transfer_ids: Sequence[str]) -> dict[str, list[SerialRange]]:
    """The serial ranges this side's record says each of ``transfer_ids`` with ``partner`` moved, or may yet
    move, by transfer ID (transfers unknown here, or with another Party, left out).

    A transfer rejected, cancelled or terminated moved nothing, whichever side proposed it: its units stayed with
    the initiating side, whose final state decides (DESIGN.md section 4, "Crossing messages"), so a copy the
    partner credited anyway is the partner's error, for its own record to freeze. Its terms may name units held
    at home (a partner's proposal may name anything, and a partner that refused this side's proposal would
    freeze the units it refused), so only blocks of it still reserved, debited, pending or held under its ID
    count: none, unless this side's records disagree with each other."""
    heads = [h for h in (await tx.transfer_heads(transfer_ids)).values() if h.partner == partner]
    moved = await tx.transfer_ranges([h.transfer_id for h in heads if h.state not in NOTHING_MOVED])
    for role, statuses in STILL_HERE.items():
        stayed = [h.transfer_id for h in heads if h.state in NOTHING_MOVED and h.role is role]
        moved.update(await tx.ranges_of_transfers(stayed, statuses))
    return moved


def _compared_the_blocks(run: ReconciliationRun) -> bool:
    """Whether ``run`` compared the two sides' blocks to the end: it found differing blocks, or it asked for a
    person because the partner's message log was rewritten, which this side finds and notes while the run goes
    on. A run that asked for a person because the partner refused to answer, or answered what cannot be true,
    ended before it compared any block."""
    if run.status is Status.BLOCKS_INCONSISTENT:
        return True
    return run.status is Status.MANUAL_INTERVENTION_REQUIRED and _log_problem(run.partner, run.detail)


def _log_problem(partner: str, detail: str) -> bool:
    """True when a run's detail is this side's own finding that ``partner``'s message log cannot be trusted (not
    a text the partner sent)."""
    return detail.startswith(
        (
            f"{partner}'s message log was rewritten",
            f"{partner} never proved its message log",
            f"{partner} proved its message log consistent from a head",
        )
    )


def _leave_out_messages(evidence: partner_pb2.TransferEvidence, room: int) -> None:
    """Leave out the last listed messages of ``evidence``, counting them in ``messages_omitted``, until it takes
    at most ``room`` bytes in a reply (its field's tag and length included), or none is left. Each message's size
    is measured once: a reply may carry hundreds of transfers."""
    framed = [_framed(m.ByteSize()) for m in evidence.messages]
    # The evidence's own tag and length, and the count of messages left out growing by up to five bytes.
    size = _framed(evidence.ByteSize()) + 6
    keep = len(framed)
    while keep and size > room:
        keep -= 1
        size -= framed[keep]
    evidence.messages_omitted += len(framed) - keep
    del evidence.messages[keep:]


def _framed(length: int) -> int:
    """The bytes a length-delimited field of ``length`` bytes takes: its tag, its length as a varint, itself."""
    return 1 + max(1, (length.bit_length() + 6) // 7) + length


def _too_small(partner: str, what: str, size: int, budget: int) -> GatewayError:
    return GatewayError(
        ResponseCode.ENVELOPE_TOO_LARGE,
        f"{what} takes {size} bytes and a reconciliation message to {partner} has room for {budget} (its"
        " envelope cap, less the header): raise the cap both sides configure for each other (max_envelope_bytes)",
    )


def _bucket_name(ref: NodeRef) -> str:
    """A bucket as a person reads it: its number and its group."""
    group = ref.group
    return (
        f"bucket {ref.prefix} of group {group.unit_kind} {group.issuing_registry} {group.vintage} {group.action}"
        f" {group.purpose}"
    )


def _rewritten(partner: str, known: PartnerLogHead | None, size: int, root: bytes, proof: list[bytes]) -> str:
    """Why ``partner``'s head is not an extension of the one it showed before (empty when it is)."""
    if known is None or known.tree_size == 0:
        return ""
    if merkle.verify_consistency(known.tree_size, size, known.root_hash, root, proof):
        return ""
    return (
        f"{partner}'s message log was rewritten: its head of {size} entries (root {root.hex()[:16]}…) is not an"
        f" extension of the head of {known.tree_size} entries (root {known.root_hash.hex()[:16]}…) it showed on"
        f" {known.seen_at:%Y-%m-%d %H:%M:%S} UTC; compare both sides' message logs before trusting either"
    )
