"""Combine finished runs: average their predicted probabilities, or their weights (a model soup).

    rehead ensemble runs/s0 runs/s1 runs/s2 --out runs/ens          # N models, mean calibrated probability
    rehead ensemble runs/s0 runs/s1 runs/s2 --out runs/soup --soup  # one model, mean weights

An ensemble directory is self-contained (members are copied, so moving or deleting the
originals breaks nothing):

    config.yaml   kind: ensemble, combine, members (paths inside the directory), sources
    labels.json   the members' common class order
    members/N/    each member's config.yaml, labels.json, model.safetensors (+ summary, split or seen, T)
    summary.json  the members' own val accuracies
    split.json    only when every member was trained on the same split
    seen.json     otherwise: every sample some member trained or chose on, so `evaluate` can warn
                  (a member that is itself a soup of other splits counts with its own seen.json); the
                  fingerprint of the CSVs they came from (table rows are named by number, so an edited
                  table is said, not matched); and ``unrecorded``: members with neither file (a run from
                  an older rehead, or made by hand), which the check cannot cover: said when the
                  ensemble is made and when it is evaluated (``with_unrecorded``)

A soup (Wortsman et al. 2022, "Model soups"; timm's ``avg_checkpoints.py`` does the same for
one run's checkpoints) is an ordinary run directory of ``kind: soup`` whose model.safetensors is
the members' element-wise mean, so predict / evaluate / export take it as they take any run.
It only makes sense for members fine-tuned from the same pretrained weights with the same
architecture, which is checked.

Each member's probabilities are its calibrated ones, softmax(logits / T) with the member's own
temperature.json: what ``rehead predict`` on that member shows, so the mean is of the numbers a user
saw; ``evaluate``'s "uncalibrated" figures are the mean of the members' softmax(logits), and it names
the members' T (``member_temperatures``). (Ensembles written before this, ``combine: mean probability``,
averaged softmax(logits) and keep doing so: a directory's predictions do not change under it.) Before
anything is written every member's weights are read whole (a truncated model.safetensors was accepted
here and failed only at predict) and compared: a copy of a member would count twice in the mean.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .data import DATA_KW
from .data.tabular import row_tables
from .run import BadRun, Run, read_config
from .rundir import RunDir, load_tensors, read_json

# temperature.json: each member's T, applied to its logits before the mean (and when it is predicted or exported alone);
# seen.json: what a soup member's own members saw (members/N evaluated alone warns as the soup does)
MEMBER_FILES = ("config.yaml", "labels.json", "model.safetensors", "summary.json", "split.json", "seen.json",
                "temperature.json")
CALIBRATED = "mean calibrated probability"  # config.yaml's combine: each member's softmax(logits / its own T)
UNCALIBRATED = "mean probability"  # what ensembles written before calibrated members said (softmax(logits))


def make_ensemble(runs: list, out, soup: bool = False, overwrite: bool = False, echo=print) -> Path:
    """Write an ensemble (or, with ``soup``, a weight-averaged run) of ``runs`` to ``out``; ``echo``
    says what the ensemble cannot vouch for (members with no record of their training samples, tables
    of which no one version is known), as ``rehead.fit`` says its warnings."""
    members = _check_members(runs)
    out_path = Path(out).resolve()
    for m in members:  # --overwrite would empty out a member before it is read
        d = m.dir.resolve()
        if out_path == d or out_path in d.parents or d in out_path.parents:
            raise BadRun(f"--out {out} is one of the members, holds one or lies inside one ({m.dir}): choose a new "
                         "directory (copy the members out first to rebuild an ensemble from its own members/N)")
    if soup:
        _check_soup(members)  # before the directory is claimed: a refused soup leaves nothing
    run = RunDir.create(out, overwrite=overwrite)
    with run.kept_if_finished():  # stopped part way: no half ensemble, and a run --overwrite replaced comes back
        (_write_soup if soup else _write_ensemble)(members, run)
    run.release()
    for w in record_gaps(run.path):
        echo(f"warning: {w}")
    return run.path


def _check_members(runs: list) -> list[Run]:
    if len(runs) < 2:
        raise BadRun(f"an ensemble needs at least two runs, got {len(runs)}")
    members, given = [], {}
    for r in runs:
        if Path(r).resolve() in given:  # one run twice would count as two votes, or two weights
            raise BadRun(f"{r} is given twice (also as {given[Path(r).resolve()]}): give each run once")
        given[Path(r).resolve()] = r
        cfg = read_config(Path(r))
        if cfg.get("kind", "fit") not in ("fit", "soup"):
            raise BadRun(f"{r} is a {cfg.get('kind')!r} directory: an ensemble combines fit runs")
        members.append(Run(r, lazy=True))
        if members[-1].task != "multiclass":  # ensembles average class probabilities
            raise BadRun(f"{r} is a --task {members[-1].task} run: ensembles and soups combine multiclass runs only")
    first = members[0]
    for m in members[1:]:
        if m.classes != first.classes:
            raise BadRun(f"{m.dir} predicts classes {m.classes} but {first.dir} predicts {first.classes}: "
                         "members must share their classes, in the same order")
        if m.modality != first.modality:
            raise BadRun(f"{m.dir} takes {m.modality} inputs but {first.dir} takes {first.modality}")
    _check_weights(members)
    return members


def _check_weights(members: list[Run]) -> None:
    """Every member's weights read whole, and no two alike: a copy of a run (``cp -r runs/a runs/a2``)
    would be one model counted twice in the mean, and a truncated file failed only at predict."""
    seen = {}
    for m in members:
        try:
            digest = weights_digest(load_tensors(m.dir / "model.safetensors"))
            m.temperature  # noqa: B018  (a damaged temperature.json is refused here, not at predict)
        except BadRun as e:
            raise BadRun(f"cannot combine {m.dir}: {e}") from None
        if digest in seen:
            raise BadRun(f"{m.dir} and {seen[digest].dir} hold the same weights (a copy of one run, or two "
                         "fits that ended alike): one model would count twice in the mean; give it once")
        seen[digest] = m


def weights_digest(state: dict) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes: the same weights whatever the file's
    header order or metadata (a re-saved copy is still a copy)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _member_summary(m: Run) -> dict:
    s = m.summary
    seed = (m.config.get("fit") or m.config.get("args") or {}).get("seed")
    return {"source": str(m.dir.resolve()), "model": m.config["model"], "seed": seed,
            "val_acc": s.get("val_acc"), "last_val_acc": s.get("last_val_acc"), "temperature": m.temperature}


RECORDS = ("split.json", "seen.json")  # what a run trained or chose on: its split, or its members' union
UNKNOWN_VERSION = "unknown"  # a fingerprint's sha256 where no one version of a file is known (never a file's)


def _record(run_dir: Path) -> dict | None:
    """A run's split.json, or (an ensemble's or soup's members split apart) seen.json; None without either."""
    p = next((run_dir / f for f in RECORDS if (run_dir / f).exists()), None)
    return read_json(p) if p else None


def _common_split(members: list[Run]) -> dict | None:
    """The members' split if they all have the same one (then the val split is fair to all)."""
    splits = [read_json(m.dir / "split.json") if (m.dir / "split.json").exists() else None for m in members]
    return splits[0] if all(s == splits[0] for s in splits) else None


def _seen_by_any(members: list[Run]) -> dict:
    """The union of the members' train and val items: a score on any of them is optimistic. A soup
    member of other splits has no split.json but a seen.json, itself such a union (soups nest).
    With it the fingerprint of the files they were read from, as split.json has: table rows are named
    by number ("t.csv#7") and read back by ``evaluate``, so a table edited since is said rather than
    matched. A file two members read in different versions, or whose rows a record names without its
    sha256 (a seen.json from before this), gets UNKNOWN_VERSION: never a file's digest, so ``evaluate``
    says it cannot tell. ``unrecorded``: the members (and a soup member's members) without a record."""
    seen = {"train": set(), "val": set()}
    files, unknown = {}, set()
    for m in members:
        rec = _record(m.dir) or {}
        named = [it for k in seen for it in (rec.get(k) or {}).get("items") or []]
        for k in seen:
            seen[k].update((rec.get(k) or {}).get("items") or [])
        known = (rec.get("fingerprint") or {}).get("files") or {}
        for f, sha in known.items():
            if files.setdefault(f, sha) != sha:  # two versions of one file: its rows by number name two things
                unknown.add(f)
        if m.modality == "tabular":  # rows by number in a table of no recorded version
            unknown |= row_tables(named) - set(known)
    files.update(dict.fromkeys(unknown, UNKNOWN_VERSION))
    return {**{k: {"items": sorted(v, key=str)} for k, v in seen.items()}, "fingerprint": {"files": files},
            "unrecorded": unrecorded([m.dir for m in members], [str(m.dir.resolve()) for m in members])}


def unrecorded(dirs: list[Path], names: list[str]) -> list[str]:
    """Of the runs at ``dirs`` (called ``names``), those with no record of the samples they trained on
    (neither split.json nor seen.json: a run from an older rehead, or made by hand), and those a soup
    or ensemble among them lists as such: what a check for seen samples cannot cover."""
    out = []
    for d, name in zip(dirs, names):
        if not any((d / f).exists() for f in RECORDS):
            out.append(name)
        elif not (d / "split.json").exists():
            try:
                inner = read_json(d / "seen.json").get("unrecorded") or []
            except (BadRun, AttributeError):  # damaged: its own check says so where it reads it
                inner = []
            out += [f"{n} (in {name})" for n in inner]
    return out


def unrecorded_said(names: list[str], kind: str) -> str:
    """The warning for members (``names``) with no record of their training samples."""
    one = len(names) == 1
    return (f"{'member' if one else f'{len(names)} members'} {', '.join(names)} {'has' if one else 'have'} no record "
            f"of the samples {'it' if one else 'they'} trained or chose on (neither split.json nor seen.json: a run "
            f"from an older rehead, or made by hand): the count of samples this {kind} has seen leaves "
            f"{'it' if one else 'them'} out, so a score may be optimistic without a warning saying so; evaluate on "
            "data you know none of its members trained on")


def unrecorded_of(run) -> list[str]:
    """The members of an ensemble or soup (and of a soup among them) with no record of their training
    samples: an ensemble's read from its members/N (so one made before seen.json listed them is said
    too), a soup's from its seen.json. [] for a fit."""
    if isinstance(run, Ensemble):
        sources = run.config.get("sources") or []
        names = [f"{m}" + (f" (from {sources[i]})" if i < len(sources) else "")
                 for i, m in enumerate(run.config["members"])]
        return unrecorded([m.dir for m in run.members], names)
    if run.kind == "soup" and (run.dir / "seen.json").exists():
        try:
            return list(read_json(run.dir / "seen.json").get("unrecorded") or [])
        except (BadRun, AttributeError):
            return []
    return []


def with_unrecorded(run, info: dict) -> dict:
    """``info`` (``Run._seen``'s) plus the members whose samples its count of seen ones cannot cover."""
    gaps = unrecorded_of(run)
    if not gaps:
        return info
    return {**info, "unrecorded": gaps, "warnings": info.get("warnings", []) + [unrecorded_said(gaps, run.kind)]}


def record_gaps(run_dir) -> list[str]:
    """What an ensemble's or soup's seen.json cannot vouch for, in words: members without a record
    of their samples, and tables of which no one version is known (``_seen_by_any``)."""
    d = Path(run_dir)
    if not (d / "seen.json").exists():
        return []
    rec = read_json(d / "seen.json")
    kind = read_config(d).get("kind", "ensemble")
    out = [unrecorded_said(rec["unrecorded"], kind)] if rec.get("unrecorded") else []
    files = (rec.get("fingerprint") or {}).get("files") or {}
    unknown = [f for f, sha in files.items() if sha == UNKNOWN_VERSION]
    if unknown:
        out.append(f"the members name rows of {', '.join(unknown)} by number, but "
                   f"{'it was' if len(unknown) == 1 else 'they were'} read in different versions by different members "
                   "(edited between their fits), or in a version a member did not record: `evaluate` cannot tell "
                   "which rows of a table they trained on, and will say so instead of counting them")
    return out


def _write_common(members: list[Run], run: RunDir, summary: dict) -> None:
    run.write_json("labels.json", members[0].classes)
    split = _common_split(members)
    if split is not None:
        run.write_json("split.json", split)
    else:
        run.write_json("seen.json", _seen_by_any(members))
    summary["shared_val_split"] = split is not None
    run.write_json("summary.json", summary)


def _write_ensemble(members: list[Run], run: RunDir) -> None:
    names = []
    for i, m in enumerate(members):
        dst = run.subdir(f"members/{i}")
        for f in MEMBER_FILES:
            if (m.dir / f).exists():
                dst.write_bytes(f, (m.dir / f).read_bytes())
        names.append(f"members/{i}")
    fit = members[0].config.get("fit") or {}
    run.write_yaml("config.yaml", {"kind": "ensemble", "combine": CALIBRATED, "members": names,
                                   "models": sorted({str(m.config.get("model")) for m in members}),
                                   "sources": [str(m.dir.resolve()) for m in members],
                                   "data_config": members[0].config.get("data_config"),
                                   "fit": {k: fit[k] for k in DATA_KW if k in fit}})
    _write_common(members, run, {"kind": "ensemble", "members": [_member_summary(m) for m in members]})


def _check_soup(members: list[Run]) -> None:
    first = members[0].config
    if any((m.config.get("fit") or {}).get("method") == "lora" for m in members):
        raise BadRun("a soup of LoRA runs would average each adapter's A and B matrices apart, which is not "
                     "the mean of their updates: use a plain ensemble (without --soup)")
    for m in members[1:]:
        for key in ("model", "cut", "head"):
            if m.config.get(key) != first.get(key):
                raise BadRun(f"a soup averages weights, so members need one architecture: {m.dir} has "
                             f"{key} {m.config.get(key)!r} but {members[0].dir} has {first.get(key)!r} "
                             "(use a plain ensemble, without --soup, to combine different models)")
    states = _states(members)
    keys = set(states[0])
    for m, sd in zip(members[1:], states[1:]):
        if set(sd) != keys or any(sd[k].shape != states[0][k].shape for k in keys):
            raise BadRun(f"{m.dir}/model.safetensors does not match {members[0].dir}'s tensors: "
                         "a soup needs members of one architecture")
    _check_shared_start(members, states)


def _frozen_stages(m: Run) -> int:
    """How many stages (from the input side) no phase of the run trained."""
    trainable = [p.get("trainable") for p in m.config.get("phases") or []]
    if any(t is None or t < 0 for t in trainable):
        return 0
    return max(int(m.config.get("cut") or 0) - max(trainable, default=0), 0)


def _check_shared_start(members: list[Run], states: list[dict]) -> None:
    """A soup averages models fine-tuned from one start: the weights of the stages none of them
    trained must be equal. Two runs of a randomly initialised encoder (``tabular:``) with different
    seeds share a spec and an architecture but no weights: their mean scored 0.40 on iris."""
    frozen = min(_frozen_stages(m) for m in members)
    if frozen < 1:
        return  # every stage trained somewhere: nothing left to compare
    stages = members[0].model.backbone.stage_names[:frozen]
    params = {k for k, _ in members[0].model.named_parameters()}  # not buffers: BN statistics may move
    for k in sorted(params):
        stage = next((n for n in stages if k.startswith(f"backbone.stages.{n}.")), None)
        if stage is None:
            continue
        for m, sd in zip(members[1:], states[1:]):
            if not torch.equal(sd[k], states[0][k]):
                raise BadRun(f"{m.dir} and {members[0].dir} differ in stage {stage!r}, which neither trained: they "
                             "do not start from the same weights (e.g. a random encoder drawn with another --seed), "
                             "so their mean is not a model; use a plain ensemble (without --soup)")


def _states(members: list[Run]) -> list[dict]:
    return [load_tensors(m.dir / "model.safetensors") for m in members]


def _write_soup(members: list[Run], run: RunDir) -> None:
    states = _states(members)
    run.save_tensors("model.safetensors", {k: _mean([sd[k] for sd in states]) for k in states[0]})
    cfg = dict(members[0].config, kind="soup", soup={"members": [str(m.dir.resolve()) for m in members]})
    if _common_split(members) is None:  # member 0's split and seed are not the soup's: its report showed them
        cfg["data_summary"] = {"splits": SPLITS_DIFFER}
        cfg["fit"] = {k: v for k, v in (cfg.get("fit") or {}).items() if k != "seed"}
    run.write_yaml("config.yaml", cfg)
    _write_common(members, run, {"kind": "soup", "members": [_member_summary(m) for m in members]})


SPLITS_DIFFER = ("the members were trained on different train/val splits (e.g. other seeds): no val split is "
                 "this model's own; score it on held-out data with `rehead evaluate DIR DATA`")


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors[0].is_floating_point():  # counters such as BatchNorm's num_batches_tracked
        return tensors[0]
    if all(torch.equal(t, tensors[0]) for t in tensors[1:]):  # frozen weights stay bit for bit (a float mean rounds)
        return tensors[0]
    return torch.stack([t.float() for t in tensors]).mean(0).to(tensors[0].dtype)


def describe(ens_dir) -> str:
    """What an ensemble directory averages, in words (the ``ensemble`` command's summary)."""
    ens = Ensemble(ens_dir)
    if not ens.calibrated:
        return ("the mean of the members' uncalibrated probabilities, softmax(logits) (written before members' "
                "temperatures counted)")
    temps = ", ".join(f"{t:.3g}" for t in ens.member_temperatures)
    return (f"the mean of the members' calibrated probabilities, each softmax(logits / its own T) as `rehead predict` "
            f"on it shows (T = {temps}; 1 where a member has no temperature.json); the ensemble adds no T of its own")


def kind_said(run) -> str | None:
    """An ensemble or a soup in words (evaluate and predict say it: never read as one model's); None for a fit."""
    if run.kind == "ensemble":
        return f"ensemble of {len(run.members)} runs (their mean probability)"
    if run.kind == "soup":
        return f"soup of {len(run.config['soup']['members'])} runs (one model of their mean weights)"
    return None


class Ensemble(Run):
    """An ensemble directory loaded back: logits are the log of the members' mean probability,
    so ``predict`` / ``evaluate`` (softmax, argmax) give the averaged prediction. Each member's
    probability is its calibrated one (its own temperature.json) unless the directory predates that
    (``combine: mean probability``); the ensemble has no temperature of its own: T = 1 on the mean."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.config = read_config(self.dir)
        self.classes = read_json(self.dir / "labels.json")
        self.members = [Run(self.dir / m, lazy=True) for m in self.config["members"]]
        self.calibrated = self.config.get("combine", UNCALIBRATED) == CALIBRATED
        self._model = None

    @property
    def model(self):
        raise BadRun(f"{self.dir} is an ensemble of {len(self.members)} models, not one: export a member "
                     "(members/N), or average the members' weights into one model with `rehead ensemble --soup`")

    @property
    def modality(self) -> str:
        return self.members[0].modality

    @property
    def member_temperatures(self) -> list[float]:
        """The T each member's logits are divided by before the mean (1 in an ensemble from before that)."""
        return [m.temperature if self.calibrated else 1.0 for m in self.members]

    def _mean_probs(self, items: list, tta: bool = False, **kw):
        """(mean of the members' probabilities at their temperatures, mean of their softmax(logits), kept,
        skipped): each member's own views averaged first; one pass of each model gives both."""
        from .calibration import scaled_probs
        if tta:
            self.check_tta()
        cal, raw, kept = [], [], None
        for m, t in zip(self.members, self.member_temperatures):
            views, k, _ = m._views(items, tta=tta, **kw)
            cal.append(dict(zip(k, scaled_probs(views, t).float())))
            raw.append(dict(zip(k, scaled_probs(views).float())))
            kept = k if kept is None else [i for i in kept if i in cal[-1]]
        kept_set = set(kept)
        skipped = [items[i] for i in range(len(items)) if i not in kept_set]
        if not kept:
            empty = torch.empty(0, len(self.classes))
            return empty, empty, [], skipped
        return _member_mean(cal, kept), _member_mean(raw, kept), kept, skipped

    def _seen(self, items, info: dict) -> dict:
        """A run's count of the samples its members saw, and a warning naming the members (or a soup
        member's members) that left no record of theirs, which the count cannot cover."""
        return with_unrecorded(self, super()._seen(items, info))

    def _views(self, items: list, tta: bool = False, **kw):
        """One view: the log of the members' mean (calibrated) probability."""
        probs, kept, skipped = self.probs(items, tta=tta, **kw)
        return [probs.log()], kept, skipped

    def probs(self, items: list, tta: bool = False, calibrated: bool = True, **kw):
        """The members' mean probability; ``calibrated=False``: the mean of their softmax(logits)."""
        cal, raw, kept, skipped = self._mean_probs(items, tta=tta, **kw)
        return (cal if calibrated else raw), kept, skipped

    def _metrics(self, items, labels, info: dict, tta: bool = False, views=None, **kw) -> dict:
        """A run's metrics of the mean; "uncalibrated" is the mean of the members' softmax(logits) (the ensemble
        has no T of its own: T = 1 on the mean), and ``member_temperatures`` says the T that were applied.
        (``views``, a fit's cached test logits, never comes to an ensemble.)"""
        from .calibration import ece, nll
        cal, raw, kept, skipped = self._mean_probs(items, tta=tta, **kw)
        res = super()._metrics(items, labels, info, tta=tta, views=([cal.log()], kept, skipped))
        y = res["targets"]
        return {**res, "ece_uncalibrated": ece(raw, y), "nll_uncalibrated": nll(raw, y),
                "member_temperatures": self.member_temperatures, "probs_uncalibrated": raw.max(1).values.tolist()}


def _member_mean(probs: list[dict], kept: list) -> torch.Tensor:
    """The mean over members of each kept item's probabilities (``probs``: one {index: row} per member)."""
    return torch.stack([torch.stack([p[i] for i in kept]) for p in probs]).mean(0)
