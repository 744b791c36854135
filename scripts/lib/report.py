#!/usr/bin/env python3
"""The report step of the benchmark scripts (scripts/bench*.sh).

Each script writes one JSON object per measurement (a JSONL file) and then
runs

    python3 scripts/lib/report.py MODE JSONL OUT.md HEADER

MODE picks the script's table layout: `bench` (scripts/bench.sh), `tls`
(bench-tls.sh), `passthrough` (bench-passthrough.sh). The tables are printed
as aligned text and written to OUT.md as markdown (PERFORMANCE.md pastes them
from there). `balance` (bench-balance.sh) prints its one text table:

    python3 scripts/lib/report.py balance RESULTS VARIANT...

The shared parts are here once: medians, the median [min, max] cell, ratios
to the best peer and to direct, CPU per unit, and the text and markdown table
writer. Standard library only.
"""

import json
import math
import statistics
import sys

# ---------------------------------------------------------------- figures


def load(path):
    """The measurements of a JSONL file, in file order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def scenarios(rows):
    """Scenario names in the order they were first measured."""
    seen = []
    for r in rows:
        if r["scenario"] not in seen:
            seen.append(r["scenario"])
    return seen


def median(xs):
    """The median, or None for no values."""
    return statistics.median(xs) if xs else None


def fmt(v, unit="", mega=False):
    """A figure for a table cell: rates (rps, tps, cps) as 12.3k (and, with
    `mega`, 1.234M); other values with 2, 1 or 0 decimals by size."""
    if v is None:
        return "-"
    if unit in ("rps", "tps", "cps"):
        if mega and v >= 1e6:
            return f"{v/1e6:.3f}M"
        return f"{v/1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def spread(vals, unit, mega=False):
    """`median [min, max]` of the values."""
    return f"{fmt(median(vals), unit, mega)} [{fmt(min(vals), unit, mega)}, {fmt(max(vals), unit, mega)}]"


def ratio(v, base):
    """v / base with two decimals, `-` without a base."""
    return f"{v/base:.2f}" if base else "-"


def best_of(meds, better="higher"):
    """The best of the medians given (None ones left out): the highest, or
    the lowest for lower-is-better metrics; None when there is none."""
    meds = [m for m in meds if m is not None]
    if not meds:
        return None
    return max(meds) if better == "higher" else min(meds)


def cpu_per_unit(cpu_s, extra, norm):
    """Proxy CPU seconds per GB moved (`norm` GB) or per million requests
    (Mreq), from a measurement's extra `bytes` / `requests`; None otherwise."""
    if cpu_s is None:
        return None
    if norm == "GB" and extra.get("bytes"):
        return cpu_s / (extra["bytes"] / 1e9)
    if norm == "Mreq" and extra.get("requests"):
        return cpu_s / (extra["requests"] / 1e6)
    return None


def units_per_cpu(cpu_s, extra):
    """Requests (or GB) per proxy CPU second; None without CPU time."""
    c = cpu_s or 0
    if c > 0 and extra.get("requests"):
        return extra["requests"] / c
    if c > 0 and extra.get("bytes"):
        return extra["bytes"] / 1e9 / c
    return None


def by_target(rs, order):
    """For each target of `order` measured in `rs`: (all its rows, its good
    rows: ok and with a value)."""
    out = {}
    for t in order:
        tr = [r for r in rs if r["target"] == t]
        if tr:
            out[t] = (tr, [r for r in tr if r.get("ok") and r.get("value") is not None])
    return out


def first_error(tr):
    return next((r.get("error", "") for r in tr if not r.get("ok")), "")


# ---------------------------------------------------------------- tables


class Report:
    """Text (stdout) and markdown (a file) built table by table."""

    def __init__(self, header, md_intro, level="##", escape_pipes=False):
        self.text = [header]
        self.md = list(md_intro)
        self.level = level
        self.escape_pipes = escape_pipes

    def table(self, title, hdr, rows):
        widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
        self.text.append("")
        self.text.append(title)
        self.text.append("  ".join(h.ljust(w) for h, w in zip(hdr, widths)))
        for row in rows:
            self.text.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        cell = (lambda c: str(c).replace("|", "/")) if self.escape_pipes else str
        self.md.append(f"{self.level} {title}")
        self.md.append("")
        self.md.append("| " + " | ".join(hdr) + " |")
        self.md.append("|" + "|".join("---" for _ in hdr) + "|")
        for row in rows:
            self.md.append("| " + " | ".join(cell(c) for c in row) + " |")
        self.md.append("")

    def finish(self, md_path):
        print("\n".join(self.text))
        with open(md_path, "w") as f:
            f.write("\n".join(self.md) + "\n")


# ---------------------------------------------------------------- scripts/bench.sh

BENCH_PEERS = ["haproxy", "haproxy-splice", "nginx"]
BENCH_ORDER = ["direct", "haproxy", "haproxy-splice", "nginx", "sluicegate", "sluicegate-completion", "sluicegate-readiness"]
# Secondary figures not shown as columns.
BENCH_HIDDEN = ("errors", "connect_errors", "failed", "offered_rps", "backlog_at_end", "retransmits",
                "rss_before_kib", "rss_after_kib", "rss_after_hold_kib", "setup_s", "opened")


BENCH_OURS = ["sluicegate", "sluicegate-completion", "sluicegate-readiness"]


def bench_summary(rows):
    """One row per scenario: every target's median, then for each sluicegate
    target its median and its CPU per unit against the best peer's (the
    side-by-side table of PERFORMANCE.md)."""
    ours = [t for t in BENCH_OURS if any(r["target"] == t for r in rows)]
    shown = [t for t in BENCH_ORDER if any(r["target"] == t for r in rows)]
    hdr = ["scenario (unit)"] + shown
    for t in ours:
        hdr += [f"{t} vs best peer", f"{t} CPU/unit vs best peer"]
    table = []
    for s in scenarios(rows):
        rs = [r for r in rows if r["scenario"] == s]
        m = rs[0]
        unit, better, norm = m["unit"], m["better"], m.get("cpu_norm") or ""
        med, per = {}, {}
        for t, (_, good) in by_target(rs, BENCH_ORDER).items():
            med[t] = median([r["value"] for r in good])
            p = [cpu_per_unit(r.get("cpu_s"), r.get("extra", {}), norm) for r in good]
            per[t] = median([x for x in p if x is not None])
        best = best_of([med.get(t) for t in BENCH_PEERS], better)
        best_per = best_of([per.get(t) for t in BENCH_PEERS], "lower")
        row = [f"{s} ({unit})"] + [fmt(med.get(t), unit, mega=True) for t in shown]
        for t in ours:
            row += [ratio(med.get(t), best) if med.get(t) is not None else "-",
                    ratio(per.get(t), best_per) if per.get(t) is not None else "-"]
        table.append(row)
    return hdr, table


def bench(rows, header):
    rep = Report(header, ["# sluicegate benchmark: latest run", "", header, "",
        "Median [min, max] over the repeats. *vs best peer*: the target's median divided by the best of "
        "haproxy / haproxy-splice / nginx (for lower-is-better metrics > 1 means worse); *vs direct*: divided by "
        "the direct (no proxy) median. *cpu s*: the proxy's CPU seconds (user+system, all threads and processes) "
        "during one run; *cpu/unit*: CPU seconds per GB or per million requests; *threads*: the most threads "
        "the proxy had during a run (io_uring io-wq workers, iou-wrk, show up here).", ""], escape_pipes=True)
    rep.table("summary: medians; ratios against the best of haproxy / haproxy-splice / nginx "
              "(CPU per unit below 1 = less CPU)", *bench_summary(rows))
    for s in scenarios(rows):
        rs = [r for r in rows if r["scenario"] == s]
        m = rs[0]
        unit, better, norm = m["unit"], m["better"], m.get("cpu_norm") or ""
        stats = {}
        for t, (tr, good) in by_target(rs, BENCH_ORDER).items():
            vals = [r["value"] for r in good]
            thr = [r["threads_max"] for r in tr if r.get("threads_max") is not None]
            per = [cpu_per_unit(r.get("cpu_s"), r.get("extra", {}), norm) for r in good]
            extras = {}
            for r in good:
                for k, v in r.get("extra", {}).items():
                    if isinstance(v, (int, float)) and k not in ("requests", "bytes", "loadgen_cpu_s"):
                        extras.setdefault(k, []).append(v)
            errs = [r.get("error", "") for r in tr if not r["ok"]]
            stats[t] = dict(vals=vals, med=median(vals),
                            cpu=median([r["cpu_s"] for r in good if r.get("cpu_s") is not None]),
                            per=median([p for p in per if p is not None]), n=len(tr),
                            thr=max(thr) if thr else None,
                            extras={k: median(v) for k, v in extras.items()}, err=errs[0] if errs else "")
        best = best_of([stats[t]["med"] for t in BENCH_PEERS if t in stats], better)
        direct = stats.get("direct", {}).get("med")
        # CPU per unit against the thriftiest peer (lowest CPU per GB / request).
        best_per = best_of([stats[t]["per"] or None for t in BENCH_PEERS if t in stats], "lower")
        extra_keys = []
        for t in stats:
            for k in stats[t]["extras"]:
                if k not in extra_keys and k not in BENCH_HIDDEN:
                    extra_keys.append(k)
        if s == "latency":
            extra_keys = [k for k in ["p50_us", "p999_us", "rps"] if k in extra_keys]
        hdr = ["target", f"{m['metric']} ({unit}) median [min, max]", "vs best peer", "vs direct", "cpu s",
               f"cpu/{norm}" if norm else "cpu/unit", "cpu/unit vs best peer", "threads"] + extra_keys
        if s == "latency":
            hdr += ["added p50 us", "added p99 us"]
        table = []
        for t, st in stats.items():
            if st["med"] is None:
                e = st["err"] or "failed"
                table.append([t, (e if e.startswith("failed") else "failed: " + e)[:90]] + [""] * (len(hdr) - 2))
                continue
            cell = spread(st["vals"], unit, mega=True)
            if len(st["vals"]) < st["n"]:
                cell += f" ({st['n'] - len(st['vals'])} failed)"
            row = [t, cell, ratio(st["med"], best), ratio(st["med"], direct), fmt(st["cpu"]),
                   fmt(st["per"]), ratio(st["per"], best_per) if st["per"] is not None else "-",
                   str(st["thr"]) if st["thr"] is not None else "-"]
            row += [fmt(st["extras"].get(k)) for k in extra_keys]
            if s == "latency":
                d = stats.get("direct", {})
                for v, base in ((st["extras"].get("p50_us"), d.get("extras", {}).get("p50_us")),
                                (st["med"], d.get("med"))):
                    row.append(fmt(v - base) if (v is not None and base is not None and t != "direct") else "-")
            table.append(row)
        rep.table(f"{s}: {m['desc']} ({better} is better)", hdr, table)
    return rep


# ---------------------------------------------------------------- scripts/bench-tls.sh


def tls(rows, header):
    rep = Report(header, ["# sluicegate TLS termination benchmark: latest run", "", header, "",
        "Median [min, max] over the repeats; *vs best peer* = median / best of haproxy, nginx "
        "(for lower-is-better metrics < 1 is better); *cpu s* = the proxy's CPU seconds in one run; "
        "*per cpu s* = units per proxy CPU second (handshakes or requests per CPU second, GB per CPU second).", ""])
    for s in scenarios(rows):
        rs = [r for r in rows if r["scenario"] == s]
        m = rs[0]
        unit = m["unit"]
        st = {}
        for t, (tr, good) in by_target(rs, ["haproxy", "nginx", "sluicegate"]).items():
            vals = [r["value"] for r in good]
            per = [units_per_cpu(r.get("cpu_s"), r.get("extra", {})) for r in good]
            st[t] = dict(vals=vals, med=median(vals), cpu=median([r["cpu_s"] for r in good]),
                         per=median([p for p in per if p is not None]), err=first_error(tr))
        best = best_of([st[t]["med"] for t in ("haproxy", "nginx") if t in st], m["better"])
        hdr = ["target", f"{m['metric']} ({unit}) median [min, max]", "vs best peer", "cpu s", "per cpu s"]
        table = []
        for t, v in st.items():
            if v["med"] is None:
                table.append([t, ("failed: " + v["err"])[:80], "", "", ""])
                continue
            table.append([t, spread(v["vals"], unit), ratio(v["med"], best), fmt(v["cpu"]),
                          fmt(v["per"], unit if unit in ("rps", "cps") else "")])
        rep.table(f"{s}: {m['desc']} ({m['better']} is better)", hdr, table)
    return rep


# ---------------------------------------------------------------- scripts/bench-passthrough.sh


def passthrough(rows, header):
    rep = Report(header, ["# sluicegate TLS passthrough benchmark: latest run", "", header, "",
        "Median [min, max] over the repeats; *vs best peer* = median / best of haproxy, nginx; "
        "*vs direct* = median / direct (client to the TLS backend, no proxy); *cpu s* = the proxy's "
        "CPU seconds in one run; *backend cpu s* = the TLS backend's (HAProxy terminating TLS).", ""],
        level="###")
    for s in scenarios(rows):
        rs = [r for r in rows if r["scenario"] == s]
        m = rs[0]
        unit = m["unit"]
        st = {}
        for t, (tr, good) in by_target(rs, ["direct", "haproxy", "nginx", "sluicegate"]).items():
            vals = [r["value"] for r in good]
            st[t] = dict(vals=vals, med=median(vals), nfail=len(tr) - len(good),
                         cpu=median([r["cpu_s"] for r in good if r.get("cpu_s") is not None]),
                         bcpu=median([r["backend_cpu_s"] for r in good]), err=first_error(tr))
        # Every passthrough figure is higher-is-better.
        best = best_of([st[t]["med"] for t in ("haproxy", "nginx") if t in st])
        direct = st.get("direct", {}).get("med")
        hdr = ["target", f"{m['metric']} ({unit}) median [min, max]", "vs best peer", "vs direct", "cpu s",
               "backend cpu s"]
        table = []
        for t, v in st.items():
            if v["med"] is None:
                table.append([t, ("failed: " + v["err"])[:80], "", "", "", ""])
                continue
            cell = spread(v["vals"], unit)
            if v["nfail"]:
                cell += f" ({v['nfail']} failed)"
            table.append([t, cell, ratio(v["med"], best), ratio(v["med"], direct), fmt(v["cpu"]), fmt(v["bcpu"])])
        rep.table(f"{s}: {m['desc']} ({m['better']} is better)", hdr, table)
    return rep


# ---------------------------------------------------------------- scripts/bench-balance.sh


def num(v):
    """A number as jq prints it: integral values without a fraction."""
    return str(int(v)) if float(v).is_integer() else repr(v)


def balance(rows, variants):
    """One line per variant: connections/s and proxy CPU us per connection as
    median [min, max] (integers, tenths), and the errors summed. The median
    is `median`'s, like the other reports' (for an even REPEAT the mean of
    the middle two, not the upper one)."""
    tenth = lambda x: math.floor(x * 10 + 0.5) / 10  # noqa: E731 (jq's round: half away from zero)
    line = "{:<10} {:<32} {:<32} {}"
    print(line.format("variant", "connections/s median [min, max]", "proxy CPU us/conn median [min, max]", "errors"))
    for v in variants:
        rs = [r for r in rows if r["v"] == v]
        cps = [r["cps"] for r in rs if r.get("cps") is not None]
        us = [r["us_per_conn"] for r in rs if r.get("us_per_conn") is not None]
        c = f"{math.floor(median(cps))} [{math.floor(min(cps))}, {math.floor(max(cps))}]" if cps else "-"
        u = f"{num(tenth(median(us)))} [{num(tenth(min(us)))}, {num(tenth(max(us)))}]" if us else "-"
        print(line.format(v, c, u, sum(r.get("errors") or 0 for r in rs)))


def main(argv):
    if len(argv) >= 3 and argv[1] == "balance":
        balance(load(argv[2]), argv[3:])
        return 0
    modes = {"bench": bench, "tls": tls, "passthrough": passthrough}
    if len(argv) != 5 or argv[1] not in modes:
        print(__doc__, file=sys.stderr)
        return 2
    _, mode, jsonl, md_path, header = argv
    modes[mode](load(jsonl), header).finish(md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
