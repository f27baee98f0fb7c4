"""Settings read from a TOML file, the environment (``PROXY_<SECTION>__<KEY>``) and secret files, validated once."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from proxy.ids import project_id
from proxy.settings.checks import validate
from proxy.settings.model import SECTIONS, ProjectOverride, Settings, SettingsError
from proxy.urls import REDACTED, redact_url

ENV_PREFIX = "PROXY_"
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "PROXY_HOST": ("server", "host"),
    "PROXY_PORT": ("server", "port"),
    "PROXY_WORKERS": ("server", "workers"),
    "GITLAB_URL": ("gitlab", "url"),
    "CUBE_API_BASE_URL": ("product_analytics", "cube_api_base_url"),
    "CUBE_API_KEY": ("product_analytics", "cube_api_key"),
}
#: OpenTelemetry's standard variables, for the [tracing] fields they name (PROXY_TRACING__* wins over them); the
#: general endpoint gets OTLP's traces path, and OTEL_SDK_DISABLED=true turns tracing off whatever else says
OTEL_OVERRIDES: dict[str, str] = {
    "OTEL_SERVICE_NAME": "service_name",
    "OTEL_EXPORTER_OTLP_HEADERS": "headers",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "headers",
    "OTEL_TRACES_SAMPLER_ARG": "sample_ratio",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "endpoint",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "endpoint",
}
OTLP_TRACES_PATH = "/v1/traces"


def _coerce(value: Any, typ: Any, where: str, problems: list[str], from_env: bool) -> Any:
    """Check (and, for environment strings, convert) one value against its annotated type."""
    origin = get_origin(typ)
    args = get_args(typ)
    if origin is Literal:
        if value in args:
            return value
        problems.append(f"{where}: must be one of {', '.join(map(repr, args))}, not {value!r}")
        return None
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(value, inner, where, problems, from_env)
    if origin is tuple:  # tuple[str, ...]: a TOML array, or a comma-separated environment value
        if from_env and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return tuple(value)
        problems.append(f"{where}: must be a list of strings, not {value!r}")
        return None
    if typ is bool:
        if from_env and isinstance(value, str) and value.lower() in {"1", "true", "yes", "0", "false", "no"}:
            return value.lower() in {"1", "true", "yes"}
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: must be true or false, not {value!r}")
        return None
    if typ is int or typ is float:
        if from_env and isinstance(value, str):
            try:
                value = typ(value)
            except ValueError:
                problems.append(f"{where}: must be a number, not {value!r}")
                return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: must be a number, not {value!r}")
            return None
        if typ is int and not isinstance(value, int):
            problems.append(f"{where}: must be a whole number, not {value!r}")
            return None
        return typ(value)
    if typ is str:
        if isinstance(value, str):
            return value
        problems.append(f"{where}: must be a string, not {value!r}")
        return None
    raise TypeError(f"unsupported settings type {typ!r}")  # pragma: no cover - programming error


def _build_section(cls: type[Any], raw: Mapping[str, Any], name: str, problems: list[str], env_keys: set[str]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            problems.append(f"[{name}] {key}: unknown setting (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key in known & raw.keys():
        coerced = _coerce(raw[key], hints[key], f"[{name}] {key}", problems, from_env=key in env_keys)
        if coerced is not None or raw[key] is None:
            values[key] = coerced
    return cls(**values)


def settings_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from parsed TOML plus environment overrides; raise every problem at once."""
    problems: list[str] = []
    env = {} if env is None else env
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = raw.get(name, {})
        if not isinstance(section, Mapping):
            problems.append(f"[{name}]: must be a table")
            section = {}
        sections[name] = dict(section)
    for name in raw:
        if name not in SECTIONS and name != "projects":
            problems.append(f"[{name}]: unknown section (known: {', '.join([*SECTIONS, 'projects'])})")
    env_keys: dict[str, set[str]] = {name: set() for name in SECTIONS}
    for var, (section_name, key) in ENV_OVERRIDES.items():
        if var in env:
            sections[section_name][key] = env[var]
            env_keys[section_name].add(key)
    for var, key in OTEL_OVERRIDES.items():  # in order: the traces' own variables after the general ones
        if (value := env.get(var)) is not None:
            sections["tracing"][key] = (
                value.rstrip("/") + OTLP_TRACES_PATH if var == "OTEL_EXPORTER_OTLP_ENDPOINT" else value
            )
            env_keys["tracing"].add(key)
    raw_projects_env: dict[str, dict[str, Any]] = {}
    for var, value in env.items():  # the general rule, which wins over the short names
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) == 2 and parts[0] in SECTIONS:
            sections[parts[0]][parts[1]] = value
            env_keys[parts[0]].add(parts[1])
        elif len(parts) == 3 and parts[0] == "projects":
            raw_projects_env.setdefault(parts[1], {})[parts[2]] = value
        else:
            problems.append(f"{var}: not a setting (PROXY_<SECTION>__<KEY> or PROXY_PROJECTS__<ID>__<KEY>)")
    built = {
        name: _build_section(cls, sections[name], name, problems, env_keys[name]) for name, cls in SECTIONS.items()
    }

    projects: dict[int, ProjectOverride] = {}
    raw_projects = raw.get("projects", {})
    if not isinstance(raw_projects, Mapping):
        problems.append("[projects]: must be a table of [projects.<numeric id>] tables")
        raw_projects = {}
    raw_projects = {str(k): v for k, v in raw_projects.items()}
    for key, values in raw_projects_env.items():
        existing = raw_projects.get(key, {})
        raw_projects[key] = {**existing, **values} if isinstance(existing, Mapping) else existing
    for key, value in raw_projects.items():
        if project_id(str(key)) is None:
            problems.append(f"[projects.{key}]: the key must be a numeric project id")
            continue
        if not isinstance(value, Mapping):
            problems.append(f"[projects.{key}]: must be a table")
            continue
        env_project_keys = set(raw_projects_env.get(key, {}))
        override = _build_section(ProjectOverride, value, f"projects.{key}", problems, env_project_keys)
        projects[int(key)] = _secret_from_file(override, "cube_api_key", f"[projects.{key}]", problems)

    built["product_analytics"] = _secret_from_file(
        built["product_analytics"], "cube_api_key", "[product_analytics]", problems
    )
    for secret in ("signing_key", "password", "sentinel_password"):
        built["redis"] = _secret_from_file(built["redis"], secret, "[redis]", problems)
    built["tracing"] = _secret_from_file(built["tracing"], "headers", "[tracing]", problems)
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        built["tracing"] = dataclasses.replace(built["tracing"], enabled=False)
    settings = Settings(projects=projects, **built)
    validate(settings, problems)
    if problems:
        raise SettingsError(problems)
    return settings


def _secret_from_file(section: Any, field: str, where: str, problems: list[str]) -> Any:
    """``field`` read from ``<field>_file`` (a mounted secret), stripped of surrounding whitespace."""
    path = getattr(section, f"{field}_file")
    if path is None:
        return section
    if getattr(section, field) is not None:
        problems.append(f"{where}: set {field} or {field}_file, not both")
        return section
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        problems.append(f"{where} {field}_file: cannot read {path}: {exc.strerror or exc}")
        return section
    return dataclasses.replace(section, **{field: secret})


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced and every URL shown without its secrets
    (for --print-config and the status page): which fields are which, their metadata says (``model.setting``)."""
    data = dataclasses.asdict(settings)
    data["projects"] = {str(k): v for k, v in data["projects"].items()}
    sections = [(SECTIONS[name], data[name]) for name in SECTIONS]
    sections += [(ProjectOverride, override) for override in data["projects"].values()]
    for cls, section in sections:
        for f in dataclasses.fields(cls):
            value = section.get(f.name)
            if value is None:
                continue
            if f.metadata.get("secret"):
                section[f.name] = REDACTED
            elif f.metadata.get("url"):
                section[f.name] = redact_url(value)
    data["redis"]["sentinels"] = list(data["redis"]["sentinels"])
    return data


def load_settings(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any) and the environment; raise :class:`SettingsError` on any problem."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path:  # None or "": no file, the environment alone
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError([f"{path}: cannot read the settings file ({exc.strerror})"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError([f"{path}: not valid TOML ({exc})"]) from exc
    return settings_from_mapping(raw, env)
