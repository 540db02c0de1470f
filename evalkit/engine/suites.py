"""Suites: per checkpoint, one `metric=average` row per suite once its members' units are written."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from evalkit.models.spec import ModelSpec
from evalkit.results.schema import build_rows, unit_id
from evalkit.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from evalkit.engine.loop import Shared
    from evalkit.engine.plan import TaskData


def _member_main(member: dict[str, str], opened: dict[str, TaskData], suites: dict[str, TaskSpec]) -> str:
    if member.get("main_metric"):
        return member["main_metric"]
    name = member["task"]
    if name in suites:
        return "average"
    return opened[name].spec.main_metric


def average_suites(sh: Shared, suites: list[TaskSpec], keys: list[str], specs: dict[str, ModelSpec],
                    precision: str, planned: set[tuple[str, str]] | None = None) -> None:
    """Per checkpoint, one `metric=average` row per suite: the unweighted mean of its members'
    main metrics, written once every member is ok (else `failed`, naming the members that are not).

    A suite's hash covers its members' resolved hashes, so a changed member changes the suite's
    result; suites come after their members (and inner suites before outer ones). `planned`, the
    (checkpoint, task) pairs of the plan: a suite none of whose members was planned for a checkpoint
    (a contrastive suite on a `cap` checkpoint) gets no row there, rather than a failed one."""

    by_name = {s.name: s for s in suites}
    resolved: dict[str, TaskSpec] = {}
    for suite in suites:  # expand() lists inner suites first
        members = {m["task"]: (resolved[m["task"]].hash if m["task"] in resolved else sh.opened[m["task"]].spec.hash)
                   for m in suite.options["tasks"]}
        resolved[suite.name] = replace(suite, data={"members": members})
    status = sh.store.status()
    for key in keys:
        spec = specs[key]
        averaged: set[str] = set()
        for suite in suites:
            if planned is not None and not any((key, m["task"]) in planned or m["task"] in averaged
                                               for m in suite.options["tasks"]):
                continue
            averaged.add(suite.name)
            rsuite = resolved[suite.name]
            uid = unit_id(key, suite.name, rsuite.hash, precision)
            if status.get(uid) == "ok":
                sh.counts["skipped"] += 1
                continue
            values, problems, template = [], [], None
            for m in suite.options["tasks"]:
                name = m["task"]
                mspec = resolved.get(name) or sh.opened[name].spec
                rows = sh.store.unit_rows(unit_id(key, name, mspec.hash, precision))
                metric = _member_main(m, sh.opened, by_name)
                if rows is None:
                    problems.append(f"{name} (no result)")
                    continue
                template = template or rows[0]
                hit = [r for r in rows if r.get("metric") == metric and r.get("status") == "ok" and r.get("value") is not None]
                if not hit:
                    status_m = rows[0].get("status")
                    problems.append(f"{name} ({'failed' if status_m != 'ok' else f'no {metric}'})")
                    continue
                values.append(float(hit[0]["value"]))
            partial = suite.options.get("partial") or []
            ok = not problems
            note = "" if ok else f"members not ok: {', '.join(problems)}"
            if ok and partial:
                note = f"partial: {len(partial)} member(s) not computed by evalkit ({', '.join(partial)})"
            row = build_rows(spec, rsuite, uid, metrics=None, status="ok" if ok else "failed", error=note,
                             provenance=sh.common)[0]
            if template:
                for col in ("arch", "family", "gflops_per_sample", "gflops_total", "eval_type"):
                    row[col] = template.get(col)
            row.update(task_type="suite", metric="average", value=(sum(values) / len(values)) if ok else None,
                       n_samples=len(suite.options["tasks"]))
            sh.store.write(uid, [row], row["status"], "" if ok else note)
            sh.counts["ok" if ok else "failed"] += 1
            value = f"average={row['value']:.4f}" if ok else f"FAILED ({note})"
            print(f"[suite] {spec.name} x {suite.name}: {value}", file=sys.stderr, flush=True)


