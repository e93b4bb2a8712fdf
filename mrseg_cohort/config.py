"""The job configuration: one YAML file, validated strictly, loaded once by the CLI.

Every section derives from :class:`Strict` (unknown keys refused, values frozen). Relative local
paths in the file are resolved against the YAML file's folder, paths given on the command line
(overrides) against the working directory (the rule lives in :mod:`mrseg_cohort.paths`).
``bundled:<name>`` names a model shipped inside the package (``bundled:demo``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator,
                      model_validator)
from pydantic.fields import FieldInfo

from mrseg_cohort.errors import ConfigError
from mrseg_cohort.io.limits import MAX_MODEL_VOXELS
from mrseg_cohort.paths import from_command_line, resolve_local
from mrseg_cohort.redact import mask_url_credentials

Layout = Literal["phantom", "nako-nifti", "ukbb-dicom-zip", "nifti-folder"]
Device = Literal["auto", "cpu", "cuda"]

BUNDLED_MODELS_DIR = Path(__file__).parent / "models"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(Strict):
    """fsspec/s3fs options; credentials come from the AWS chain unless given here (never logged)."""

    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    anon: bool = False
    key: str | None = Field(None, repr=False)
    secret: str | None = Field(None, repr=False)
    request_attempts: int = Field(3, ge=1)
    """Attempts botocore makes per request; mrseg-cohort retries failed reads again on top
    (with backoff), so a dead endpoint is given up on after about a minute, not many."""
    timeout_s: float = Field(60.0, gt=0)
    """Seconds botocore waits to connect, and for each read of an answer, before it gives up on the
    attempt (a stalled connection is then retried)."""

    @field_serializer("endpoint_url")
    def _endpoint_without_credentials(self, value: str | None) -> str | None:
        """Dumps (run records, the report) never hold a ``user:password@`` of the endpoint URL."""
        return mask_url_credentials(value) if value else value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, mask_url_credentials(value) if isinstance(value, str) else value

    def fsspec_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config_kwargs": {"retries": {"max_attempts": self.request_attempts,
                                                             "mode": "standard"},
                                                 "connect_timeout": self.timeout_s, "read_timeout": self.timeout_s}}
        if self.endpoint_url:
            out["endpoint_url"] = self.endpoint_url
        if self.profile:
            out["profile"] = self.profile
        if self.region:
            out["client_kwargs"] = {"region_name": self.region}
        if self.anon:
            out["anon"] = True
        if self.key and self.secret:
            out["key"], out["secret"] = self.key, self.secret
        return out


class CohortConfig(Strict):
    name: str = Field(min_length=1)
    layout: Layout
    visit: str = "0"
    """Visit (instance) for layouts whose file names carry none."""
    pattern: str = "{participant_id}/{visit}/{contrast}_station{station}.nii.gz"
    """nako-nifti / phantom: file name pattern under the input URI; ``{station}`` optional."""
    participant_regex: str = r"^(?P<participant_id>[^_.]+)"
    """nifti-folder: regex on the file name; named groups participant_id and optionally visit."""
    modality: Literal["MRI", "CT"] = "MRI"
    """nifti-folder: modality of the scans (MRI-only models are not run on CT)."""


def _location(value: str, what: str) -> str:
    """``value`` if it names a location; an empty one is refused (it would mean the config's folder)."""
    if not value.strip():
        raise ValueError(f"the {what} is empty; give a folder or a URI such as s3://bucket/prefix")
    return value


class InputConfig(Strict):
    uri: str
    storage: StorageConfig = StorageConfig()
    participants_file: str | None = None
    """Optional selection: one participant id per line, or a UK Biobank bulk file
    (``<eid> 20201_<instance>_0`` per line)."""

    @field_validator("uri")
    @classmethod
    def _uri_given(cls, v: str) -> str:
        return _location(v, "input URI")

    @field_validator("participants_file")
    @classmethod
    def _file_given(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("the participants file is empty; leave the key out to select every participant")
        return v


class ContrastsConfig(Strict):
    available: tuple[str, ...] = ("in", "opp", "water", "fat")
    segment: tuple[str, ...] = ("in",)
    fat: str | None = "fat"
    water: str | None = "water"

    @model_validator(mode="after")
    def _segment_subset(self) -> "ContrastsConfig":
        missing = [c for c in self.segment if c not in self.available]
        if missing or not self.segment:
            raise ValueError(f"segment must name contrasts from available {list(self.available)}, "
                             f"not {list(self.segment)}")
        for role in ("fat", "water"):
            value = getattr(self, role)
            if value is not None and value not in self.available:
                raise ValueError(f"{role}: {value!r} is not one of available {list(self.available)}")
        return self


class StitchingConfig(Strict):
    inplane_spacing_mm: float | None = Field(None, gt=0)
    """Target in-plane spacing; default the finest in-plane spacing of the stations."""
    z_spacing_mm: float | None = Field(None, gt=0)
    """Target slice spacing; default the finest slice spacing of the stations."""
    save_stitched: bool = False
    """Also write the stitched images under ``stitched/`` of the output."""


class ModelConfig(Strict):
    name: str = Field("base", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Letters, digits, ``_`` and ``-`` (it names label files, ``<contrast>.<name>.nii.gz``, and units
    of work, where ``+`` joins names)."""
    weights: str = Field(min_length=1)
    """nnU-Net trained-model folder (local path or URI), ``bundled:<name>``, or ``mrsegmentator``
    (MRSegmentator's base model; ``mrsegmentator:body_comp`` its second) found as MRSegmentator
    finds it (see :mod:`mrseg_cohort.weights.resolve`)."""
    checksum: str | None = None
    """Optional sha256 of the weights (``mrseg-cohort weights checksum DIR --folds ...``); verified at start."""
    folds: tuple[int | Literal["all"], ...] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    tile_step_size: float = Field(0.5, gt=0, le=1)
    mirroring: bool = False
    skip_empty_tiles: bool = False
    """Run only the sliding-window tiles within half a patch of anything that could be body (found in
    the image itself). Off by default: on whole-body scans cropped to the body it skips nothing, and
    where it does skip (air far from the body) the labels there become background where
    MRSegmentator may label noise, so they are no longer MRSegmentator's (docs/segmentation.md)."""
    compile: bool = False
    """``torch.compile`` the network once per actor (GPU; about 20 s at start, faster tiles after)."""
    tiles_per_batch: int | None = Field(None, ge=1)
    """Tiles per forward pass; default by the GPU's memory (8 from 40 GB, 4 from 16 GB, else 2), 1 on the CPU."""
    device: Device = "auto"
    labels: Literal["mrseg", "body_comp", "any"] = "mrseg"
    """Label map the model must have (from its dataset.json); ``any`` accepts whatever it has."""
    allow_label_mismatch: bool = False
    modalities: tuple[Literal["MRI", "CT"], ...] = ("MRI", "CT")
    contrasts: tuple[str, ...] | None = None
    """Contrasts to run this model on; default contrasts.segment."""

    @field_validator("folds")
    @classmethod
    def _folds_nonempty(cls, v: tuple) -> tuple:
        if not v:
            raise ValueError("at least one fold")
        return v


class OutputConfig(Strict):
    uri: str
    storage: StorageConfig = StorageConfig()
    commit_every: int = Field(200, ge=1)
    """Scans per published table part (fewer, larger Parquet files for bigger values)."""
    commit_interval_s: float = Field(1200.0, gt=0)
    """Publish at least this often (seconds) while scans finish, so tables stay current."""
    lease_timeout_s: float = Field(180.0, gt=0)
    """A run holding the output is taken for gone when its heartbeat is older than this (seconds;
    at once when it ran on this host and its process has ended). See docs/operations.md."""
    lease_heartbeat_s: float = Field(30.0, gt=0)
    """How often the running job renews its lease on the output (seconds)."""
    allow_non_empty: bool = False
    """Allow the first run into a folder that already holds files of someone else's (they are left
    alone); by default such a folder is refused."""

    @field_validator("uri")
    @classmethod
    def _uri_given(cls, v: str) -> str:
        return _location(v, "output URI")

    @model_validator(mode="after")
    def _heartbeat_within_timeout(self) -> "OutputConfig":
        """A lease renewed no more often than it times out looks stale to other runs between renewals."""
        if self.lease_heartbeat_s >= self.lease_timeout_s:
            raise ValueError(f"lease_heartbeat_s ({self.lease_heartbeat_s:g} s) must be shorter than "
                             f"lease_timeout_s ({self.lease_timeout_s:g} s), or other runs take the lease "
                             "between heartbeats; a heartbeat of a sixth of the timeout is the default")
        return self


class ResourcesConfig(Strict):
    address: str | None = None
    """Ray cluster address (``auto``, ``ray://host:10001``); None starts a local Ray."""
    gpus: int | None = Field(None, ge=0)
    """GPUs to use; None = all Ray sees. One segmentation actor per GPU."""
    cpu_workers: int | None = Field(None, ge=1)
    """Concurrent CPU tasks (read/stitch, measure); None = CPUs Ray sees, minus the actors'."""
    cpu_segmenters: int = Field(1, ge=1)
    """Segmentation actors when no GPU is used."""
    threads_per_segmenter: int | None = Field(None, ge=1)
    memory_gb_per_scan: float = Field(4.0, gt=0)
    """Memory Ray reserves for each read/stitch and measure task."""
    max_retries: int = Field(2, ge=0)
    """Ray retries of a task or actor call lost to a worker crash or node loss."""
    in_flight_per_worker: int = Field(2, ge=1)
    """Scans queued at one segmentation actor at a time."""
    gpu_wait_s: float = Field(900.0, gt=0)
    """On a cluster: how long to wait for the first GPU actor (the autoscaler starting a GPU worker)."""
    actor_start_timeout_s: float = Field(600.0, gt=0)
    """On a local Ray: how long the segmentation actors may take to load their models."""
    max_consecutive_failures: int = Field(5, ge=1)
    """One actor failing this many scans in a row stops the job (a broken actor, not bad scans)."""


class LimitsConfig(Strict):
    first_n: int | None = Field(None, ge=1)
    """Process only the first N participants (in manifest order)."""
    max_file_mb: float = Field(2000.0, gt=0)
    max_decompressed_mb: float = Field(4000.0, gt=0)
    max_dim: int = Field(2048, ge=2)
    max_model_voxels: int = Field(MAX_MODEL_VOXELS, ge=1)
    """Most voxels a scan may take on a model's grid (its field of view at the model's spacing),
    checked from the header before inference allocates it; a scan above it fails (a wrong voxel
    spacing such as 50 mm would otherwise ask for tens of GB). A UK Biobank whole-body scan takes
    64 M voxels on a 1.5 mm grid (:data:`mrseg_cohort.io.limits.MAX_MODEL_VOXELS`)."""


class MeasuresConfig(Strict):
    """Settings of the per-scan measurements (docs/measures.md)."""

    erosion_voxels_inplane: int = Field(1, ge=0)
    """In-plane erosion (voxels, 2-D within each slice) of masks before fat fractions; 0 = none."""
    connectivity: Literal[6, 18, 26] = 26
    """Voxel connectivity of connected components (vessels and fragmentation)."""
    border_margin_voxels: int = Field(3, ge=0)
    """touches_border: a mask voxel within this many voxels of the field-of-view edge."""
    fragmented_below_fraction: float = Field(0.95, gt=0, le=1)
    """fragmented: the largest component holds less than this fraction of a structure's voxels."""
    swap_min_voxels_per_slice: int = Field(20, ge=1)
    """Fat-water swap check: reference (liver + muscle) voxels a slice needs to be evaluated."""
    swap_min_extent_mm: float = Field(50.0, gt=0)
    """Fat-water swap check: a run of inverted slices this long (mm along z) raises swap_suspected."""


class JobConfig(Strict):
    cohort: CohortConfig
    input: InputConfig
    contrasts: ContrastsConfig = ContrastsConfig()
    stitching: StitchingConfig = StitchingConfig()
    model: ModelConfig
    """The first of ``models`` (for settings every model shares, e.g. ``device``); give either
    ``model`` or ``models``. The base model is :attr:`base_model`, not this."""
    models: tuple[ModelConfig, ...] = ()
    """Every model run in the same pass (each scan read, stitched and preprocessed once)."""
    output: OutputConfig
    resources: ResourcesConfig = ResourcesConfig()
    limits: LimitsConfig = LimitsConfig()
    measures: MeasuresConfig = MeasuresConfig()
    source: str = ""
    """Path of the YAML file this came from (set by :func:`load_config`)."""

    @model_validator(mode="before")
    @classmethod
    def _one_or_many_models(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        has_one, has_many = data.get("model") is not None, bool(data.get("models"))
        if has_one and has_many:
            raise ValueError("give either 'model' (one model) or 'models' (a list), not both")
        if has_many:
            if not isinstance(data["models"], (list, tuple)):
                raise ValueError("'models' must be a list of model sections")
            data = {**data, "model": data["models"][0]}
        elif has_one:
            data = {**data, "models": [data["model"]]}
        return data

    @model_validator(mode="after")
    def _unique_model_names(self) -> "JobConfig":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, not {names}")
        base_model_of(self.models)
        return self

    @property
    def base_model(self) -> str:
        """The model with MRSegmentator's 40 classes whose label files carry no model suffix and whose
        rows the phenotypes use (:func:`base_model_of`); an output keeps the one of its first run."""
        return base_model_of(self.models)


def base_model_of(models: tuple[ModelConfig, ...]) -> str:
    """The base model of ``models``, by name or label set, never by position: the model named
    ``base``; else the one model with MRSegmentator's label map (``labels: mrseg``); else the only
    model.

    Raises:
        ValueError: several models could be the base model and none is named ``base``.
    """
    names = [m.name for m in models]
    if "base" in names:
        return "base"
    mrseg = [m.name for m in models if m.labels == "mrseg"]
    if len(mrseg) == 1:
        return mrseg[0]
    if len(models) == 1:
        return models[0].name
    raise ValueError(f"models: several models could be the base model ({', '.join(mrseg or names)}); name the one "
                     "with MRSegmentator's labels 'base' (its label files carry no model suffix)")


def resolve_weights(value: str, environ: Mapping[str, str] | None = None) -> str:
    """A model location: ``bundled:<name>`` -> the package's ``models/<name>`` folder;
    ``mrsegmentator[:<model>]`` -> MRSegmentator's weights folder, looked up in ``environ``
    (default ``os.environ``, read now: call this once, where the job starts)."""
    from mrseg_cohort.weights.resolve import resolve, weights_model_name

    mrseg_model = weights_model_name(value)
    if mrseg_model is not None:
        return str(resolve(mrseg_model, os.environ if environ is None else environ).path)
    if value.startswith("bundled:"):
        name = value.split(":", 1)[1]
        path = BUNDLED_MODELS_DIR / name
        if not path.is_dir():
            known = sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if p.is_dir()) \
                if BUNDLED_MODELS_DIR.is_dir() else []
            raise ConfigError(f"no bundled model {name!r}; bundled models: {known}")
        return str(path)
    return value


_PATH_KEYS = (("input", "uri"), ("input", "participants_file"), ("model", "weights"), ("output", "uri"))
"""Keys holding local paths or URIs: relative paths resolved by :mod:`mrseg_cohort.paths`."""


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping of a YAML file: ``key`` (dotted, as :func:`_dotted` writes
    it) and the 1-based ``lines`` of both."""

    def __init__(self, key: str, lines: tuple[int, int]):
        super().__init__(key, lines)
        self.key, self.lines = key, lines


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (:class:`DuplicateKeyError`).

    PyYAML keeps the last of two equal keys without a word (``output:`` twice moves the output);
    YAML itself requires keys to be unique. Keys merged in with ``<<`` may still be overridden, as
    YAML's merge keys allow. Keys are compared as loaded (``1`` and ``"1"`` differ, ``1`` and ``0x1``
    do not)."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique_keys(node, "", set())
        return super().construct_document(node)

    def _check_unique_keys(self, node: yaml.Node, where: str, visited: set[int]) -> None:
        if id(node) in visited:  # an alias of a node already checked
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique_keys(item, f"{where}[{i}]", visited)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # merged keys may be overridden; complex keys are refused by the config itself
                key = self.construct_object(key_node, deep=True)
                name = f"{where}.{key}" if where else str(key)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(name, (seen[key], line))
                seen[key] = line
                self._check_unique_keys(value_node, name, visited)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read and validate a YAML job file; raise :class:`ConfigError` with one line naming the key.

    Relative paths in the file are resolved against the file's folder; relative paths among the
    overrides (given on the command line) against the working directory (:mod:`mrseg_cohort.paths`).

    Args:
        path: the YAML file.
        overrides: dotted keys to set after reading (``{"output.uri": "/tmp/out"}``), for the CLI.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as err:
        first, second = err.lines
        where = f"lines {first} and {second}" if first != second else f"line {first}, twice"
        raise ConfigError(f"{path}: key {err.key!r} is given twice ({where}); keep one of them "
                          "(YAML would silently use the last)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(err, 'problem', err)}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (cohort, input, model, output, ...)")
    base = path.resolve().parent
    for section, key in _PATH_KEYS:
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            node[key] = resolve_local(node[key], base)
    for node in data.get("models") or []:
        if isinstance(node, dict) and isinstance(node.get("weights"), str):
            node["weights"] = resolve_local(node["weights"], base)
    path_keys = {".".join(k) for k in _PATH_KEYS}
    for dotted, value in (overrides or {}).items():
        if dotted in path_keys and isinstance(value, str):
            value = from_command_line(value)
        _set_dotted(data, dotted, value)
    data["source"] = str(path)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_describe(err, data)}") from None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _describe(err: ValidationError, data: dict) -> str:
    """The most telling validation problem as ``key.path: what is wrong``.

    Unknown keys come first (a typo ``ouptut`` also makes ``output`` missing); problems of ``model``
    are left out when the file gives ``models`` (``model`` is then a copy of ``models[0]``). Values of
    credential fields are never shown, and URL credentials in any shown value are masked.
    """
    errors = err.errors()
    if "models" in data and "model" not in data:
        errors = [e for e in errors if e["loc"][:1] != ("model",)] or errors
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    parts = first["loc"]
    if first["type"] == "extra_forbidden":
        model, _ = _walk(parts[:-1])
        known = [k for k in getattr(model, "model_fields", {}) if k != "source"]
        hint = difflib.get_close_matches(str(parts[-1]), known, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (known keys: {', '.join(known)})"
        return f"unknown key {_dotted(parts)!r}{suggestion}"
    if first["type"] == "missing":
        return f"missing required key {_dotted(parts)!r}"
    _, field = _walk(parts)
    message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
    value = first.get("input")
    if field is not None and field.repr is False:
        shown = " (value not shown: it is a credential)"
    elif isinstance(value, dict):
        shown = ""
    else:
        shown = f" (got {mask_url_credentials(repr(value))})"
    if first["type"] == "string_type" and isinstance(value, (int, float)):
        shown += "; quote the value in the YAML so that it is read as text"
    return f"{_dotted(parts)}: {message}{shown}" if parts else f"{message}{shown}"


def _walk(parts: tuple) -> tuple[Any, FieldInfo | None]:
    """The config section (model class) and field that a validation error location points to."""
    model: Any = JobConfig
    field: FieldInfo | None = None
    for part in parts:
        if isinstance(part, int):
            continue  # an index into a list of sections (models[1])
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None, None
        field = fields[part]
        model = _section_in(field.annotation)
    return model, field


def _section_in(annotation: Any) -> Any:
    """The config section class inside a field's type (``ModelConfig`` of ``tuple[ModelConfig, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_in(arg)
        if found is not None:
            return found
    return None


def _dotted(parts: tuple) -> str:
    """``("models", 1, "fold")`` -> ``models[1].fold``; pydantic's union tags (``folds[0].int``) left out."""
    out, model = "", JobConfig
    for part in parts:
        if isinstance(part, str):
            if model is None:
                break  # inside a plain field: a union member's tag, not a key
            field = model.model_fields.get(part)
            model = _section_in(field.annotation) if field is not None else None
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
