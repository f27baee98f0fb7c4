"""bench/RESULTS.md and bench/chart.png from one run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    s = results["scenarios"]
    panels = []
    if "pass_through" in s:
        p = s["pass_through"]
        overload = [
            ("nginx", "nginx_overload_256"),
            ("proxy", "proxy_overload_256"),
            ("nginx\n2 workers", "nginx_2_workers_overload_256"),
            ("proxy\n2 workers", "proxy_2_workers_overload_256"),
            ("proxy\naiohttp only", "proxy_aiohttp_only_overload_256"),
        ]
        labels = [
            "nginx",
            "aiohttp\nfloor",
            "plain\naiohttp",
            "protocol\nserver",
            "proxy\n1 worker",
            "proxy\n2 workers",
            "proxy\naiohttp only",
        ]
        keys = [
            "nginx",
            "aiohttp_floor",
            "plain_aiohttp_proxy",
            "protocol_proxy",
            "proxy_1_worker",
            "proxy_2_workers",
            "proxy_aiohttp_only",
        ]
        present = [(label, p[key]["cpu_us_per_request"]) for label, key in zip(labels, keys, strict=True) if key in p]
        panels.append(("CPU per request (µs), pass-through", [lb for lb, _ in present], [v for _, v in present]))
        panels.append(
            (
                "p99 latency (ms) at 256 connections",
                [label for label, key in overload if key in p],
                [p[key]["p99_ms"] for _, key in overload if key in p],
            )
        )
    if "cached_meta" in s:
        m = s["cached_meta"]
        panels.append(("meta requests/s", ["Cube /meta", "proxy (cached)"], [m["cube"]["rps"], m["proxy"]["rps"]]))
    if "burst" in s:
        b = s["burst"]
        panels.append(
            (
                "dashboard burst: upstream calls",
                ["direct", "proxy"],
                [b["direct"]["upstream_calls"], b["proxy"]["upstream_calls"]],
            )
        )
        panels.append(
            ("dashboard burst: p95 to all panels (s)", ["direct", "proxy"], [b["direct"]["p95_s"], b["proxy"]["p95_s"]])
        )
    if "large" in s:
        lr = s["large"]
        panels.append(
            (
                "50,000 rows: time to first byte (ms)",
                ["direct", "proxy"],
                [lr["direct"]["ttfb_ms"], lr["proxy"]["ttfb_ms"]],
            )
        )
    if not panels:
        return False
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows))
    flat = axes.flatten() if hasattr(axes, "flatten") else [axes]
    reference, ours = "#8c8c8c", ["#fca326", "#fc6d26", "#e24329", "#a3371f", "#6e1e12"]
    for ax, (title, labels, values) in zip(flat, panels, strict=False):
        colours, shade = [], 0
        for label in labels:  # references in grey, everything of ours in orange shades
            if label.startswith(("nginx", "Cube", "direct")):
                colours.append(reference)
            else:
                colours.append(ours[shade % len(ours)])
                shade += 1
        bars = ax.bar(labels, values, color=colours)
        ax.set_title(title, fontsize=10)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                f"{value:g}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    for ax in list(flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"product-analytics-proxy vs. references ({results['when']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(results: dict[str, Any], out: Path) -> None:
    has_chart = _chart(results, out / "chart.png")
    s = results["scenarios"]
    lines = [
        "# Benchmark results",
        "",
        f"One run of `make bench` on {results['when']}: {results['machine']['cpus']} CPUs, Python "
        f"{results['machine']['python']}, {results['seconds_per_run']} s per wrk run (1 wrk thread), "
        f"{results.get('rounds', 1)} interleaved rounds: each round measures the reference and the proxy back to back, "
        "a ratio is taken within each round, and the median ratio is reported with its range. Tables show each "
        "figure's median over the rounds. CPU per request is the server processes' user + system time divided by "
        "the requests they served; it is steadier than requests/s on these shared machines.",
        "",
        "## Targets",
        "",
        "| target | value | wanted | met |",
        "|---|---|---|---|",
    ]
    ranges: dict[str, Any] = {}
    for scenario in s.values():
        ranges.update({k[: -len("_range")]: v for k, v in scenario.items() if k.endswith("_range")})
    for name, v in results["targets"].items():
        met = "n/a" if v["met"] is None else ("yes" if v["met"] else "**no**")
        spread = f" ({ranges[name][0]} to {ranges[name][1]})" if name in ranges else ""
        lines.append(f"| {name} | {v['value']}{spread} | {v['target']} | {met} |")
    if has_chart:
        lines += ["", "![the proxy against its references](chart.png)"]
    if "pass_through" in s:
        p = s["pass_through"]
        lines += [
            "",
            "## Pass-through load (fast upstream: nginx returning a 2 KB Cube-like answer)",
            "",
            "The proxy runs with its default settings but three: the rate limit is off (one token makes every "
            "call), GitLab's answers are cached for the whole run (the auth cache stays warm), and `log_level` is "
            "WARNING (no access line, as nginx runs with `access_log off`). All callers are one tenant, so most of "
            "them queue at the per-tenant cap of 32; the notes measure what that costs (nothing measurable).",
            "",
            "| server | connections | requests/s | CPU µs/request | p50 ms | p99 ms | errors | non-2xx |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, label, conns in [
            ("direct", "upstream directly", 64),
            ("nginx", "nginx proxy_pass (keep-alive)", 64),
            ("aiohttp_floor", "aiohttp answering from memory (no upstream)", 64),
            ("plain_aiohttp_proxy", "plain aiohttp proxy (no auth, no JWT)", 64),
            ("protocol_proxy", "protocol server + the proxy's Cube client (no auth, no JWT)", 64),
            ("proxy_1_worker", "proxy, 1 worker", 64),
            ("proxy_2_workers", "proxy, 2 workers", 64),
            ("proxy_aiohttp_only", "proxy, fast lane off (aiohttp serves every request)", 64),
            ("proxy_metrics_off", "proxy, metrics off ([server] metrics = false)", 64),
            ("proxy_redis", "proxy, shared layer on (Redis)", 64),
            ("nginx_overload_256", "nginx, overload", 256),
            ("nginx_2_workers_overload_256", "nginx, 2 workers, overload", 256),
            ("proxy_overload_256", "proxy, overload", 256),
            ("proxy_2_workers_overload_256", "proxy, 2 workers, overload", 256),
            ("proxy_aiohttp_only_overload_256", "proxy, fast lane off, overload", 256),
        ]:
            if key not in p:
                continue
            r = p[key]
            lines.append(
                f"| {label} | {conns} | {r['rps']} | {r['cpu_us_per_request']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r['non2xx']} |"
            )
        lines += [
            "",
            f"Latency the proxy adds over going direct: p50 {p['added_p50_ms']} ms, p99 {p['added_p99_ms']} ms "
            f"(nginx adds {p['nginx_added_p50_ms']} ms at p50). Two workers serve {p['two_workers_rps_ratio']}x one worker's requests/s."
            + (
                f" At 256 connections the p99 target compares one nginx worker with one proxy worker; with two "
                f"workers each (one per core, as both are deployed) the proxy's p99 is "
                f"{p['overload_p99_ratio_2_workers']}x nginx's."
                if "overload_p99_ratio_2_workers" in p
                else ""
            ),
            "",
            f"aiohttp's server answering from memory, with no upstream at all, costs {p.get('aiohttp_floor_cpu_ratio', 'n/a')}x "
            f"nginx's CPU per request: the floor of any proxy built on it. A bare aiohttp proxy (one shared "
            f"`ClientSession`, nothing else) costs {p.get('plain_aiohttp_cpu_ratio', 'n/a')}x nginx; the real proxy, with "
            f"GitLab auth, JWT, coalescing, limits and logging, and its lean client towards Cube, costs "
            f"{p.get('proxy_vs_plain_aiohttp_cpu', 'n/a')}x the bare one.",
        ]
        if "protocol_proxy_cpu_ratio" in p:
            lines += [
                "",
                f"Outside aiohttp's server, a bare asyncio protocol server (httptools) forwarding through the proxy's "
                f"own Cube client, with no features, costs {p['protocol_proxy_cpu_ratio']}x nginx: the floor of "
                f"serving without aiohttp's server. A goal of 2.5x nginx sits below what the proxy's steps cost on top "
                f'of that floor, measured step by step in bench/NOTES.md ("Tenth round").',
            ]
        if "redis_cpu_cost_ratio" in p:
            lines += [
                "",
                f"The shared layer: the proxy with `[redis] url` set costs {p['redis_cpu_cost_ratio']}x "
                f"({p['redis_cpu_cost_ratio_range'][0]} to {p['redis_cpu_cost_ratio_range'][-1]}) the CPU per "
                f"request of the same proxy without it: a warm request is answered from the process's own cache "
                f"(the rate limit is off here, as in every pass-through run; with it on, each request asks Redis "
                f"for a token of the fleet's bucket).",
            ]
        if "metrics_cpu_cost_ratio" in p:
            lines += [
                "",
                f"Metrics: the proxy counting everything `/-/metrics` and `/-/status` show costs "
                f"{p['metrics_cpu_cost_ratio']}x ({p['metrics_cpu_cost_ratio_range'][0]} to "
                f"{p['metrics_cpu_cost_ratio_range'][-1]}) the CPU per request of the same proxy counting nothing "
                f"(`[server] metrics = false`), measured in the same rounds; the target is at most 1.05.",
            ]
        if "answer_hit_cpu_ratio" in p:
            lines += [
                "",
                f"The answer cache: a load answered from it costs {p['answer_hit_cpu_ratio']}x "
                f"({p['answer_hit_cpu_ratio_range'][0]} to {p['answer_hit_cpu_ratio_range'][-1]}) the CPU of a plain "
                f"pass-through request (the target: at most 1).",
            ]
        if "instructions" in s:
            ins = s["instructions"]
            lines += [
                "",
                f"Counted the steady way (user-space instructions under callgrind): the proxy "
                f"{ins['proxy_instructions_per_request']:,} per pass-through request, nginx "
                f"{ins['nginx_instructions_per_request']:,} per proxied request: "
                f"{ins['pass_through_instructions_ratio']}x. nginx spends most of a request in the kernel, which these "
                f"counts leave out, so this ratio is larger than the CPU-time one; compare versions with it, and "
                f"judge the targets (CPU time) with the CPU-time ratios above.",
            ]
            if "metrics_instructions_cost_ratio" in ins:
                lines += [
                    "",
                    f"Counted the same way: metrics cost {ins['metrics_instructions_cost_ratio']}x "
                    f"({ins['proxy_instructions_per_request']:,} against "
                    f"{ins['proxy_metrics_off_instructions_per_request']:,} with metrics off; under callgrind the "
                    f"once-a-second snapshot weighs more per request than at full speed), Redis "
                    f"{ins['redis_instructions_cost_ratio']}x ({ins['proxy_redis_instructions_per_request']:,}).",
                ]
            if "tracing_100pct_instructions_cost_ratio" in ins:
                lines += [
                    "",
                    f"Traces (`[tracing]`, the export thread and its encoding included): sampling 1% of requests costs "
                    f"{ins['tracing_1pct_instructions_cost_ratio']}x "
                    f"({ins['proxy_tracing_1pct_instructions_per_request']:,}), every request "
                    f"{ins['tracing_100pct_instructions_cost_ratio']}x "
                    f"({ins['proxy_tracing_100pct_instructions_per_request']:,}); off, nothing is loaded.",
                ]
        if "aiohttp_only_cpu_ratio" in p:
            lines += [
                "",
                f"The proxy serves plain load and dry-run calls through its fast lane (an asyncio protocol in front "
                f"of aiohttp's server, `proxy/lane/`). With the lane off, aiohttp's server serving every "
                f"request, the same proxy costs {p['aiohttp_only_cpu_ratio']}x nginx's CPU per request, and its p99 "
                f"at 256 connections is {p.get('aiohttp_only_overload_p99_ratio', 'n/a')}x nginx's.",
            ]
    if "fleet" in s:
        f = s["fleet"]
        lines += [
            "",
            f"## A fleet: a {f['panels']}-panel dashboard with a new token, 1 to 4 workers, with and without Redis",
            "",
            "Each panel on its own connection (the kernel spreads them over the workers); GitLab and Cube are "
            "the tests' fakes, counting calls. Then as many meta requests at once.",
            "",
            "| workers | Redis | GitLab calls | Cube meta calls | p50 ms | p95 ms | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for key in (
            "1_workers_local",
            "1_workers_redis",
            "2_workers_local",
            "2_workers_redis",
            "4_workers_local",
            "4_workers_redis",
        ):
            r = f.get(key)
            if r is not None:
                lines.append(
                    f"| {r['workers']} | {'yes' if r['redis'] else 'no'} | {r['gitlab_calls']} | "
                    f"{r['cube_meta_calls']} | {r['p50_ms']} | {r['p95_ms']} | {r['errors']} |"
                )
    if "cached_meta" in s:
        m = s["cached_meta"]
        lines += [
            "",
            "## Cached meta (real Cube 0.33.65)",
            "",
            f"Cube's own `/meta`: {m['cube']['rps']} requests/s (p99 {m['cube']['p99_ms']} ms); through the proxy, cached: "
            f"{m['proxy']['rps']} requests/s (p99 {m['proxy']['p99_ms']} ms, {m['proxy']['cpu_us_per_request']} µs CPU each): "
            f"**{m['cached_meta_rps_ratio']}x**.",
        ]
    if "burst" in s:
        b = s["burst"]
        lines += [
            "",
            f"## Dashboard burst ({b['proxy']['panels']} panels x {b['proxy']['viewers']} viewers at once, real stack)",
            "",
            "| | upstream calls | caller requests | p50 to all panels s | p95 to all panels s | errors |",
            "|---|---|---|---|---|---|",
            f"| direct to Cube | {b['direct']['upstream_calls']} | {b['direct']['caller_requests']} | {b['direct']['p50_s']} | {b['direct']['p95_s']} | {b['direct']['errors']} |",
            f"| through the proxy | {b['proxy']['upstream_calls']} | {b['proxy']['caller_requests']} | {b['proxy']['p50_s']} | {b['proxy']['p95_s']} | {b['proxy']['errors']} |",
            "",
            "Upstream calls are counted in Cube's own request log. Direct callers ask again on Continue wait, as Cube's client does; "
            "through the proxy, the proxy does.",
        ]
    if "viewers" in s:
        v = s["viewers"]
        off, on = v["without_cache"], v["with_cache"]
        lines += [
            "",
            f"## Dashboard viewers ({on['viewers']} viewers of one {on['panels']}-panel dashboard arriving over about"
            f" 10 s, real stack; the answer cache at a {v['ttl_s']:g} s TTL)",
            "",
            "| | Cube calls | per TTL window | Cube's CPU s | p50 to all panels s | p99 s |",
            "|---|---|---|---|---|---|",
            f"| without the answer cache | {off['cube_calls']} | {off['cube_calls_per_window']} | {off['cube_cpu_s']}"
            f" | {off['p50_s']} | {off['p99_s']} |",
            f"| with it | {on['cube_calls']} | {on['cube_calls_per_window']} | {on['cube_cpu_s']} | {on['p50_s']}"
            f" | {on['p99_s']} |",
            "",
            f"Cube's own CPU (its process's, before and after): **{v['viewers_cube_cpu_ratio']}x** less with the cache."
            " Cube calls are counted in Cube's request log.",
        ]
    if "large" in s:
        lr = s["large"]
        lines += [
            "",
            "## Large result (50,000 rows)",
            "",
            f"{lr['proxy']['bytes'] / 2**20:.1f} MB streamed. Time to first byte: direct {lr['direct']['ttfb_ms']} ms, through the "
            f"proxy {lr['proxy']['ttfb_ms']} ms; whole answer {lr['direct']['total_ms']} ms vs {lr['proxy']['total_ms']} ms. "
            f"Proxy RSS {lr['proxy_rss_baseline_mb']} MB before, peak {lr['proxy_rss_peak_mb']} MB: **+{lr['large_rss_growth_mb']} MB**.",
        ]
        if "proxy_gzip" in lr:
            lines += [
                "",
                f"Gzipped as it streams: {lr['proxy_gzip']['bytes'] / 2**20:.2f} MB on the wire"
                f" ({lr['gzip_wire_ratio']}x less), whole answer {lr['proxy_gzip']['total_ms']} ms;"
                f" proxy RSS **+{lr['large_gzip_rss_growth_mb']} MB**.",
            ]
    if "compression" in s:
        c = s["compression"]
        cpu = c["cpu_us_per_request"]
        lines += [
            "",
            f"## Answers on the wire (a {c['panel_bytes'] / 1000:.1f} KB dashboard panel)",
            "",
            f"On the wire: {c['panel_wire_bytes']['identity']} bytes plain, {c['panel_wire_bytes']['gzip']} gzipped"
            f" (**{c['panel_wire_ratio']}x** less). A 4 MiB answer cache holds {c['cache_answers_4mib']['plain']} such"
            f" panels kept plain and {c['cache_answers_4mib']['compressed']} kept compressed"
            f" (**{c['cache_capacity_ratio']}x**).",
        ]
        if "view_bytes" in c:
            lines += [
                "",
                f"A dashboard view on the real stack ({c['panels']} panels): {c['view_bytes']['identity']} bytes plain,"
                f" {c['view_bytes']['gzip']} gzipped (**{c['view_wire_ratio']}x** less).",
            ]
        lines += [
            "",
            "| CPU per request (µs) | plain | gzip |",
            "|---|---|---|",
            f"| the proxy, pass-through | {cpu['pass_through_plain']} | {cpu['pass_through_gzip']} |",
            f"| the proxy, answer cache hit | {cpu['hit_plain']} | {cpu['hit_gzip']} |",
            f"| nginx (gzip level 1) | {cpu['nginx_plain']} | {cpu['nginx_gzip']} |",
            "",
            f"A compressed cache hit costs **{c['compressed_hit_vs_plain_pass_through_cpu']}x** a plain pass-through's"
            f" CPU and {c['compressed_hit_vs_nginx_gzip_cpu']}x nginx's gzip of the same answer (medians of"
            f" {c['rounds']} rounds, same run).",
        ]
    if "held" in s:
        h = s["held"]
        lines += [
            "",
            f"## Held connections ({h['callers']} callers waiting on slow queries)",
            "",
            f"{h['callers']} concurrent callers on {h['distinct_slow_queries']} different 7-second queries (the proxy's Continue-wait "
            f"loop holds them): {h['ok']} answered 200, {h['errors']} errors, {h['upstream_calls']} calls at Cube, {h['seconds']} s. "
            f"Proxy RSS {h['proxy_rss_baseline_mb']} MB before, peak {h['proxy_rss_peak_mb']} MB: "
            f"**{h['held_rss_kb_per_call']} KB per held call**.",
        ]
    notes = out / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
