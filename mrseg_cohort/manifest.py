"""The manifest: every scan (participant x visit) of a cohort and the files it is made of.

Discovered under the input URI by the layout named in the config:

- ``phantom`` / ``nako-nifti``: NIfTI files named by ``cohort.pattern`` (placeholders
  ``{participant_id}``, ``{visit}``, ``{contrast}``, optional ``{station}``; without ``{station}``
  each file is an already stitched volume);
- ``nifti-folder``: one whole-body image per scan (NIfTI, MetaImage ``.mha`` or NRRD ``.nrrd``, as
  MRSegmentator reads), participant (and visit) from ``cohort.participant_regex`` on the file name;
  contrast = the first of ``contrasts.segment``;
- ``ukbb-dicom-zip``: one zip per participant and visit, ``<eid>_20201_<instance>_0.zip``.

The manifest is the unit-of-work list; anti-joined with what is committed it is the resume plan.
A problem that concerns one scan's inputs (two zips for one participant and visit) is kept on that
scan's :class:`ScanSource` (``problem``): the scan fails at its read stage with that message, the
others run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pandas as pd

from mrseg_cohort.config import JobConfig
from mrseg_cohort.errors import ConfigError
from mrseg_cohort.io.images import image_suffix
from mrseg_cohort.io.storage import Store

UKBB_ZIP = re.compile(r"^(?P<participant_id>\d+)_20201_(?P<visit>\d+)_(?P<array>\d+)\.zip$")
UKBB_BULK_LINE = re.compile(r"^\s*(?P<eid>\d+)\s+(?P<field>\d+)_(?P<instance>\d+)_(?P<array>\d+)\s*$")
SHOWN_IDS = 5
"""Ids named in a warning about a participants file (the rest are counted)."""
NAME_MAX_BYTES = 255
"""Longest file or folder name that common file systems allow (ext4, XFS, APFS: 255 bytes)."""
MAX_ID_BYTES = 200
"""Longest participant or visit id, in UTF-8 bytes: an id is one folder name of the output."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanSource:
    """One scan to process: a participant's visit and its files.

    Attributes:
        files: (contrast, station URIs in station-number order) pairs; for ``ukbb-dicom-zip`` a single
            ``("dicom-zip", (zip_uri,))`` entry (contrasts are found inside the zip).
        problem: why this scan's inputs cannot be used, found while listing (names the files); ""
            when there is none. Such a scan fails at its read stage; the others run.
    """

    participant_id: str
    visit: str
    layout: str
    modality: str
    files: tuple[tuple[str, tuple[str, ...]], ...]
    problem: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.participant_id, self.visit

    @property
    def contrasts(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.files)

    def stations(self, contrast: str) -> tuple[str, ...]:
        return dict(self.files).get(contrast, ())

    @property
    def uris(self) -> tuple[str, ...]:
        return tuple(u for _, uris in self.files for u in uris)


def pattern_regex(pattern: str, contrasts: tuple[str, ...]) -> re.Pattern:
    """Regex for a file-name pattern with ``{participant_id}``, ``{visit}``, ``{contrast}``, ``{station}``."""
    groups = {"participant_id": r"(?P<participant_id>[^/]+?)", "visit": r"(?P<visit>[^/]+?)",
              "contrast": "(?P<contrast>" + "|".join(re.escape(c) for c in sorted(contrasts, key=len, reverse=True))
              + ")", "station": r"(?P<station>\d+)"}
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", pattern):
        name = m.group(1)
        if name not in groups:
            raise ConfigError(f"cohort.pattern: unknown placeholder {{{name}}}; use {', '.join(groups)}")
        out += re.escape(pattern[pos:m.start()]) + groups[name]
        pos = m.end()
    out += re.escape(pattern[pos:])
    if "(?P<participant_id>" not in out or "(?P<contrast>" not in out:
        raise ConfigError("cohort.pattern needs {participant_id} and {contrast}")
    return re.compile("^" + out + "$")


def read_participant_selection(store: Store, uri: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Ids from a participants file: plain ids (all visits) and UK Biobank bulk lines (id, visit)."""
    ids: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    try:  # utf-8-sig: files saved by Excel or Notepad start with a byte-order mark
        text = store.read_bytes(uri).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{uri}: the participants file is not UTF-8 text ({err.reason} at byte {err.start})") \
            from None
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        bulk = UKBB_BULK_LINE.match(line)
        if bulk:
            pairs.add((bulk["eid"], bulk["instance"]))
        elif re.fullmatch(r"[\w.-]+", line):
            ids.add(line)
        else:
            raise ConfigError(f"{uri} line {n}: expected a participant id or a bulk line "
                              f"'<eid> 20201_<instance>_0', not {line!r}")
    return ids, pairs


def check_input(cfg: JobConfig, store: Store) -> None:
    """Refuse an input that cannot be listed, with one line (:class:`ConfigError` naming
    ``input.uri``): a missing or empty folder or bucket, refused credentials, a store that does not
    answer. The run's preflight and :func:`discover` both ask this."""
    try:
        store.check_readable(cfg.input.uri)
    except OSError as err:
        raise ConfigError(f"input.uri: {err}") from None


def discover(cfg: JobConfig, store: Store) -> list[ScanSource]:
    """All scans under ``cfg.input.uri`` for ``cfg.cohort.layout``, sorted, selected and limited.

    Raises:
        ConfigError: the input cannot be listed (:func:`check_input`), a pattern, regex or
            participants file is wrong, or no scan is found: the message says why (no file matches
            the layout, every file lies in the job's own output, the participants file selects none).
    """
    root = cfg.input.uri
    layout = cfg.cohort.layout
    if layout in ("phantom", "nako-nifti"):  # a wrong pattern or regex is refused before any listing
        pattern = pattern_regex(cfg.cohort.pattern, cfg.contrasts.available)
    elif layout == "nifti-folder":
        name_regex = _participant_regex(cfg)
    elif layout != "ukbb-dicom-zip":  # pragma: no cover - the config validates the layout
        raise ConfigError(f"cohort.layout: unknown layout {layout!r}")
    check_input(cfg, store)
    if cfg.output.uri:  # never our own output (paths resolved: links too)
        files, n_own_output = store.list_files_outside(root, cfg.output.uri)
    else:
        files, n_own_output = store.list_files(root), 0
    rel = [(u, u[len(root.rstrip("/")) + 1:]) for u in files]
    if layout in ("phantom", "nako-nifti"):
        sources = _by_pattern(cfg, rel, pattern)
    elif layout == "nifti-folder":
        sources = _by_regex(cfg, rel, name_regex)
    else:
        sources = _ukbb_zips(cfg, rel)
    if not sources:
        raise ConfigError(_no_scans_found(cfg, store, len(files) + n_own_output, n_own_output))
    models = tuple(m.name for m in cfg.models)
    sources = [_with_checked_ids(s, models) for s in sources]
    if cfg.input.participants_file:
        ids, pairs = read_participant_selection(store, cfg.input.participants_file)
        found = len(sources)
        sources = _selected(sources, ids, pairs, cfg.input.participants_file, root)
        if not sources:
            listing = "it lists no ids" if not ids and not pairs else f"none of its {len(ids) + len(pairs)} ids has scans"
            raise ConfigError(f"input.participants_file {cfg.input.participants_file} selects none of the {found} "
                              f"scans found under {root} ({listing})")
    sources.sort(key=lambda s: (s.participant_id, s.visit))
    if cfg.limits.first_n is not None:
        keep = sorted({s.participant_id for s in sources})[: cfg.limits.first_n]
        keep_set = set(keep)
        sources = [s for s in sources if s.participant_id in keep_set]
    return sources


def _no_scans_found(cfg: JobConfig, store: Store, n_listed: int, n_own_output: int) -> str:
    """Why no scan was found under the input: it is a file, every file lies in the job's own output,
    or no file is named as the layout expects (``n_listed`` files listed, ``n_own_output`` of them in
    the output)."""
    root, layout = cfg.input.uri, cfg.cohort.layout
    if n_listed == 0 and not store.is_dir(root):
        return f"input.uri {root} is a file, not a folder: give the folder (or prefix) that holds the cohort"
    if n_listed and n_own_output == n_listed:
        return (f"no scans found under {root}: all {n_listed} files there lie in this job's own output "
                f"(output.uri {cfg.output.uri}), which is never read as input; write the output elsewhere")
    expected = {"ukbb-dicom-zip": "a zip named <eid>_20201_<instance>_0.zip",
                "nifti-folder": f"an image (.nii.gz, .mha, .nrrd) whose name matches participant_regex "
                                f"{cfg.cohort.participant_regex!r}"}.get(layout, f"a file named as pattern "
                                                                                 f"{cfg.cohort.pattern!r}")
    own = f", {n_own_output} more in this job's own output (not read as input)" if n_own_output else ""
    return (f"no scans found under {root} for layout {layout!r}: none of its {n_listed - n_own_output} "
            f"files{own} is {expected}")


_UNUSABLE_IN_ID = re.compile(r"[/\\\x00-\x1f\x7f]")
"""Characters an id may not hold: path separators and control characters."""


def id_problem(value: str, what: str) -> str:
    """Why ``value`` cannot be a participant or visit id, or "" when it can: ids become single path
    components of the output (``labels/<participant_id>/<visit>/``), so they may not be empty, ``.``
    or ``..``, nor hold a path separator or a control character, nor be longer than
    :data:`MAX_ID_BYTES` (UTF-8)."""
    if value in ("", ".", ".."):
        return f"{what} {value!r} is not a usable id (it would be a path of its own)"
    if _UNUSABLE_IN_ID.search(value):
        bad = sorted(set(_UNUSABLE_IN_ID.findall(value)))
        return f"{what} {value!r} holds {', '.join(repr(c) for c in bad)}: ids may not hold path separators or control characters"
    size = len(value.encode("utf-8"))
    if size > MAX_ID_BYTES:
        return (f"{what} {value[:24]!r}... is {size} bytes long: ids may be at most {MAX_ID_BYTES} bytes "
                "(they name folders and files of the output)")
    return ""


def output_file_name(source: ScanSource, models: tuple[str, ...]) -> str:
    """The longest file name the output makes from ``source``'s ids: its staged rows', named by
    participant, visit and ``models`` (label files sit in folders named by each id alone)."""
    from mrseg_cohort.ledger.outputs import Outputs  # here: outputs imports work_units, which imports this module
    from mrseg_cohort.ledger.work_units import unit_key

    return Outputs(Store(), "").staged_uri("scans", unit_key(source.key, models)).rsplit("/", 1)[-1]


def output_name_problem(source: ScanSource, models: tuple[str, ...]) -> str:
    """Why the output cannot hold ``source``'s files, or "": :func:`output_file_name` must fit
    :data:`NAME_MAX_BYTES`, else the scan would fail after its label files were written."""
    parts = (source.participant_id, source.visit, "+".join(models))
    n_bytes = sum(len(p) if p.isascii() else len(p.encode("utf-8")) for p in parts)
    if 3 * n_bytes + 2 * len(parts) + len(".parquet") <= NAME_MAX_BYTES:
        return ""  # fits even if every byte were percent-encoded (the names' worst case): no need to build it
    size = len(output_file_name(source, models).encode("utf-8"))
    if size <= NAME_MAX_BYTES:
        return ""
    return (f"participant id {source.participant_id[:24]!r}... and visit {source.visit[:24]!r} make an output file "
            f"name of {size} bytes, above the {NAME_MAX_BYTES} bytes file systems allow; shorten the ids")


def _with_checked_ids(source: ScanSource, models: tuple[str, ...]) -> ScanSource:
    """``source``, with a ``problem`` (it fails at read, before anything of it is written, naming its
    file) when an id is unusable or too long for the output's file names."""
    problem = id_problem(source.participant_id, "participant id") or id_problem(source.visit, "visit") \
        or output_name_problem(source, models)
    if not problem or source.problem:
        return source
    problem += "; fix cohort.participant_regex / cohort.pattern or rename the file"
    log.warning("%s (%s)", problem, source.uris[0] if source.uris else "")
    return ScanSource(source.participant_id, source.visit, source.layout, source.modality, source.files, problem)


def _selected(sources: list[ScanSource], ids: set[str], pairs: set[tuple[str, str]], participants_file: str,
              root: str) -> list[ScanSource]:
    """The sources a participants file (``ids`` for all visits, ``pairs`` of id and visit) selects;
    a warning names the selected ids with no scans."""
    kept = [s for s in sources if s.participant_id in ids or s.key in pairs]
    found_ids = {s.participant_id for s in kept}
    found_keys = {s.key for s in kept}
    unmatched = sorted(i for i in ids if i not in found_ids) + \
        [f"{pid} visit {visit}" for pid, visit in sorted(pairs) if (pid, visit) not in found_keys]
    if unmatched:
        shown = ", ".join(unmatched[:SHOWN_IDS]) + (", ..." if len(unmatched) > SHOWN_IDS else "")
        log.warning("%s: %d of %d selected ids have no scans under %s (%s)", participants_file, len(unmatched),
                    len(ids) + len(pairs), root, shown)
    return kept


def _by_pattern(cfg: JobConfig, rel: list[tuple[str, str]], regex: re.Pattern) -> list[ScanSource]:
    found: dict[tuple[str, str], dict[str, list[tuple[int, str]]]] = {}
    for uri, path in rel:
        m = regex.match(path)
        if not m:
            continue
        parts = m.groupdict()
        key = (parts["participant_id"], parts.get("visit") or cfg.cohort.visit)
        station = int(parts["station"]) if parts.get("station") else 0
        found.setdefault(key, {}).setdefault(parts["contrast"], []).append((station, uri))
    return [ScanSource(pid, visit, cfg.cohort.layout, cfg.cohort.modality,
                       tuple((c, tuple(u for _, u in sorted(stations))) for c, stations in sorted(by_c.items())))
            for (pid, visit), by_c in found.items()]


def _participant_regex(cfg: JobConfig) -> re.Pattern:
    try:
        return re.compile(cfg.cohort.participant_regex)
    except re.error as err:
        raise ConfigError(f"cohort.participant_regex is not a valid regex: {err}") from None


def _by_regex(cfg: JobConfig, rel: list[tuple[str, str]], regex: re.Pattern) -> list[ScanSource]:
    contrast = cfg.contrasts.segment[0]
    out = []
    for uri, path in rel:
        name = path.rsplit("/", 1)[-1]
        if image_suffix(name) is None:
            continue
        m = regex.search(name)
        if not m or not m.groupdict().get("participant_id"):
            continue
        visit = m.groupdict().get("visit") or cfg.cohort.visit
        out.append(ScanSource(m["participant_id"], visit, cfg.cohort.layout, cfg.cohort.modality,
                              ((contrast, (uri,)),)))
    return _unique(out, "keep one of them in the input, or fix cohort.participant_regex")


def _ukbb_zips(cfg: JobConfig, rel: list[tuple[str, str]]) -> list[ScanSource]:
    out = []
    for uri, path in rel:
        m = UKBB_ZIP.match(path.rsplit("/", 1)[-1])
        if m:
            out.append(ScanSource(m["participant_id"], m["visit"], cfg.cohort.layout, "MRI",
                                  (("dicom-zip", (uri,)),)))
    return _unique(out, "keep one of them in the input (move the other out) and run again")


def _unique(sources: list[ScanSource], remedy: str) -> list[ScanSource]:
    """One source per (participant, visit). Where several files map to one key, that scan keeps the
    first file and a ``problem`` naming all of them (it fails; the others run); ``remedy`` says what
    to change."""
    by_key: dict[tuple[str, str], list[ScanSource]] = {}
    for s in sources:
        by_key.setdefault(s.key, []).append(s)
    out = []
    for (pid, visit), group in by_key.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        uris = sorted(u for s in group for u in s.uris)
        named = ", ".join(uris[:-1]) + f" and {uris[-1]}"
        problem = f"{len(uris)} input files map to participant {pid} visit {visit}: {named}; {remedy}"
        log.warning("%s", problem)
        first = next(s for s in group if s.uris[0] == uris[0])
        out.append(ScanSource(pid, visit, first.layout, first.modality, first.files, problem))
    return out


def manifest_frame(sources: list[ScanSource]) -> pd.DataFrame:
    """The manifest as a table: participant_id, visit, layout, modality, contrasts, n_files, first URI,
    problem ("" for a usable scan)."""
    return pd.DataFrame({
        "participant_id": [s.participant_id for s in sources],
        "visit": [s.visit for s in sources],
        "layout": [s.layout for s in sources],
        "modality": [s.modality for s in sources],
        "contrasts": [",".join(s.contrasts) for s in sources],
        "n_files": [len(s.uris) for s in sources],
        "source_uri": [s.uris[0] if s.uris else "" for s in sources],
        "problem": [s.problem for s in sources],
    }, columns=["participant_id", "visit", "layout", "modality", "contrasts", "n_files", "source_uri", "problem"])
