"""``fedpriv keys``, ``fedpriv server``, ``fedpriv client`` and ``fedpriv run``: deployment commands.

See docs/deployment.md for the walk-through. Exit codes are those of :mod:`fedpriv.errors`
(2 bad arguments/config, 3 data, 4 key/bundle/crypto, 7 state, 8 the run failed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fedpriv.cli._args import add_config_args
from fedpriv.cli.monitor_cmd import add_monitor_args, monitor_alongside

__all__ = ["add_deploy_commands"]


def _out(text: str = "") -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------- keys
def cmd_keys_init(args: argparse.Namespace) -> int:
    from fedpriv.config import load_config
    from fedpriv.deploy.dealer import init_federation

    overrides = list(args.overrides or [])
    if args.threshold is not None:
        overrides += ["encryption.key_custody=threshold", f"encryption.threshold={args.threshold}"]
    cfg = load_config(args.config, overrides)
    nodes = args.nodes or cfg.federation.num_clients
    r = init_federation(
        cfg,
        args.out,
        nodes=nodes,
        hosts=args.server_host,
        sealed=args.sealed,
        max_examples=args.max_examples,
        max_clients=args.max_clients,
        force=args.force,
    )
    _out(f"federation {r.federation}: {nodes} nodes, scheme={r.scheme}, {r.num_values} values")
    _out(
        f"  HE parameters {r.params_fingerprint[:16]}: at most {r.max_clients} updates per round, weight cap {r.max_weight}"
    )
    _out(
        f"  dealer key fingerprint {r.dealer_fingerprint}  (give it to every operator out of band)"
    )
    if r.threshold:
        _out(
            f"  threshold custody: {r.threshold} of {nodes} nodes decrypt together; the key was "
            "Shamir-shared and erased, no file holds it whole"
        )
        _out(
            f"  {r.out / 'dealer'}: keep with the data owners (signing key, CA key, mask key; no "
            "share)"
        )
        _out(f"  {r.server_bundle}: copy to the server host (no share, no mask key)")
    else:
        _out(f"  {r.out / 'dealer'}: keep with the data owners (signing key, CA key, HE secret)")
        _out(f"  {r.server_bundle}: copy to the server host (no HE secret)")
    for cid, path in r.client_bundles.items():
        what = "key share and mask key" if r.threshold else "HE secret"
        how = f"{what} sealed, relayed by the server" if cid in r.sealed else f"{what} inside"
        _out(f"  {path}: copy to the device of {cid} ({how})")
    if r.threshold and not r.sealed:
        _out(
            "  delete each client bundle here once it is on its device: together, any "
            f"{r.threshold} of them hold the whole key"
        )
    return 0


def cmd_keys_add_node(args: argparse.Namespace) -> int:
    from fedpriv.deploy.dealer import add_node

    pub = args.public_key.read_bytes() if args.public_key else None
    r = add_node(args.out, client_id=args.client_id, sealed=args.sealed, public_key=pub)
    ((cid, path),) = r.client_bundles.items()
    _out(f"added {cid} to federation {r.federation} ({r.num_nodes} nodes)")
    _out(
        f"  {path}: copy to the device"
        + (" (its own node key: start with --node-key)" if pub else "")
    )
    _out(
        f"  {r.server_bundle}: re-signed; copy it to the server host, then `fedpriv server register`"
    )
    if r.threshold:
        _out(
            "  threshold custody: the new node gets the mask key but no key share (it trains "
            "and reads the global model, and is never asked to decrypt); to give it a share, "
            "deal a new key with `fedpriv keys init --force`"
        )
    if r.over_capacity:
        _out(
            f"  note: {r.num_nodes} nodes but the keys sum at most {r.max_clients} updates per "
            "round: runs must sample at most that many (federation.fraction_train)"
        )
    return 0


def cmd_keys_node_key(args: argparse.Namespace) -> int:
    from fedpriv.deploy.dealer import write_node_key

    priv, pub, fp = write_node_key(args.out)
    _out(f"wrote {priv} (private, stays on this device) and {pub}")
    _out(
        f"fingerprint {fp}; send {pub.name} to the key dealer: fedpriv keys add-node --public-key {pub.name}"
    )
    return 0


def cmd_keys_verify(args: argparse.Namespace) -> int:
    from fedpriv.deploy.bundle import verify_bundle

    b = verify_bundle(args.bundle)
    if args.dealer_fingerprint and args.dealer_fingerprint.strip() != b.dealer_fingerprint:
        from fedpriv.errors import CryptoError

        raise CryptoError(
            f"bundle {b.root} is signed by {b.dealer_fingerprint}, not {args.dealer_fingerprint}"
        )
    meta = {k: v for k, v in b.meta.items() if k != "files"}
    _out(f"bundle {b.root}: signature and {len(b.meta['files'])} file digests OK")
    _out(json.dumps(meta, indent=2, sort_keys=True))
    return 0


# ----------------------------------------------------------------------------- server
def cmd_server_start(args: argparse.Namespace) -> int:
    from fedpriv.deploy.processes import supervise
    from fedpriv.deploy.server import start_server

    t0 = time.monotonic()
    server = start_server(
        args.bundle,
        address=args.address,
        control_address=args.control_address,
        state_dir=args.state_dir,
        dealer_fingerprint=args.dealer_fingerprint,
    )
    state = server.state
    _out(
        f"SuperLink ready on {args.address} (TLS, SuperNode authentication on; Fleet API only), "
        f"federation {server.bundle.federation}, pid {server.superlink.pid}, "
        f"up in {time.monotonic() - t0:.1f}s"
    )
    _out(
        f"  Control API on {server.control_address} (loopback, operator token in {state.token_file})"
    )
    _out(
        f"  registered {len(server.nodes)} nodes: "
        + ", ".join(f"{c}={n}" for c, n in sorted(server.nodes.items()))
    )
    _out(f"  state {state.root}, logs {state.log.parent}")
    _out("  stop with Ctrl-C (or SIGTERM)")
    with monitor_alongside(args.monitor, args.monitor_dir, args.monitor_port):
        _rc, dead = supervise(server.processes)
    server.release()
    if dead is not None:
        others = ", ".join(p.name for p in server.processes if p is not dead)
        print(
            f"error: {dead.name} exited with status {dead.returncode()}; stopped {others}. "
            f"Log {dead.log_path}:\n{dead.log_tail(20)}",
            file=sys.stderr,
        )
        return 8
    _out("SuperLink stopped")
    return 0


def cmd_server_register(args: argparse.Namespace) -> int:
    from fedpriv.deploy.bundle import verify_bundle
    from fedpriv.deploy.server import (
        ServerState,
        control_connection,
        default_server_state,
        register_nodes,
    )
    from fedpriv.runs.flwr_cli import FlwrCli

    bundle = verify_bundle(args.bundle, kind="server")
    state = ServerState(Path(args.state_dir or default_server_state(bundle)).expanduser().resolve())
    address, token = control_connection(state, args.address)
    cli = FlwrCli(state.flwr_home, address, bundle.path("ca.crt"), token=token)
    before = state.read_nodes()
    nodes = register_nodes(bundle, cli, state, only_new=True)
    new = sorted(set(nodes) - set(before))
    _out(
        f"registered {len(new)} new nodes"
        + (": " + ", ".join(f"{c}={nodes[c]}" for c in new) if new else "")
    )
    return 0


# ----------------------------------------------------------------------------- client
def _device_policy(args: argparse.Namespace) -> Any:
    """The device owner's policy: ``--policy FILE`` (or the defaults), tightened by the options."""
    from fedpriv.privacy.policy import DevicePolicy

    base = DevicePolicy.load(args.policy) if args.policy else DevicePolicy()
    return base.tighten(
        max_epsilon=args.max_epsilon,
        max_lifetime_epsilon=args.max_lifetime_epsilon,
        max_delta=args.max_delta,
        min_noise_multiplier=args.min_noise_multiplier,
        min_clients_per_aggregate=args.min_clients_per_aggregate,
        allowed_modes=args.allowed_modes.split(",") if args.allowed_modes else None,
        allowed_custody=args.allowed_custody.split(",") if args.allowed_custody else None,
        require_rebuilt_aggregate=args.require_rebuilt_aggregate or None,
    )


def cmd_client_ledger_head(args: argparse.Namespace) -> int:
    """Export this device's signed ledger head(s), for ``fedpriv report verify --client-head``."""
    from fedpriv.errors import StateError
    from fedpriv.report.client_records import head_from_state, write_head

    state = Path(args.state_dir).expanduser() / "privacy_state.json"
    if not state.exists():
        raise StateError(f"{state}: no privacy state (has this device taken part in a run?)")
    heads = head_from_state(state)
    if args.run_id:
        heads = [h for h in heads if h.run_id == args.run_id]
    if not heads:
        raise StateError(f"{state}: no signed record for run {args.run_id or '(any)'}")
    head = heads[-1]
    write_head(head, args.out)
    _out(
        f"{head.client_id}: head of run {head.run_id} is record {head.seq}"
        f" ({head.digest[:16]}...), written to {args.out}; give it to whoever verifies the"
        " report: fedpriv report verify RUN_DIR --client-head FILE"
    )
    return 0


def cmd_client_start(args: argparse.Namespace) -> int:
    from fedpriv.deploy.client import prepare_client, start_supernode, state_lock
    from fedpriv.deploy.processes import serve
    from fedpriv.errors import ConfigError

    if (args.partition_id is None) != (args.num_partitions is None):
        raise ConfigError("give --partition-id and --num-partitions together")
    partition = (args.partition_id, args.num_partitions) if args.partition_id is not None else None
    prep = prepare_client(
        args.bundle,
        data=args.data,
        state_dir=args.state_dir,
        partition=partition,
        node_key=args.node_key,
        dealer_fingerprint=args.dealer_fingerprint,
        policy=_device_policy(args),
        insecure_test_seed=args.insecure_test_seed,
        schema=args.schema,
    )
    if args.schema is not None and args.data:
        from fedpriv.data.schema import check_local_data
        from fedpriv.deploy.client import normalize_data_spec

        verdict = check_local_data(normalize_data_spec(args.data), args.schema)
        _out(
            f"data schema {args.schema}: checked before every round; now "
            + ("OK" if verdict.ok else f"{verdict.reason} (fedpriv data check shows where)")
        )
    if prep.pin == "new-pin":
        _out(
            f"trusting dealer key {prep.bundle.dealer_fingerprint} from now on (pinned in "
            f"{prep.state}); compare it with the fingerprint the dealer gave you"
        )
    with state_lock(prep.state):
        proc, warm = start_supernode(
            prep,
            args.superlink,
            runtime_port=args.runtime_port,
            connect_timeout=args.connect_timeout,
            warm=not args.cold,
        )
        _out(
            f"SuperNode {prep.client_id} connected to {args.superlink} (TLS, authenticated), "
            f"pid {proc.pid}; state {prep.state}"
        )
        if not prep.has_secret:
            _out(
                "  no HE secret yet: it arrives sealed through the server when the next run starts"
            )
        rc = serve(proc, companions=(warm,) if warm is not None else ())
    if rc:
        print(
            f"error: flower-supernode exited with status {rc}; log {prep.state / 'logs' / 'supernode.log'}:\n"
            f"{proc.log_tail(20)}",
            file=sys.stderr,
        )
        return 8
    _out("SuperNode stopped")
    return 0


def cmd_client_evaluate(args: argparse.Namespace) -> int:
    from fedpriv.config import load_config
    from fedpriv.runs.evaluate import evaluate_run
    from fedpriv.runs.keys import key_dir_for

    key_dir = key_dir_for(bundle=args.bundle, state_dir=args.state_dir, keys_dir=args.keys_dir)
    cfg = load_config(args.config, args.overrides) if args.config else None
    res = evaluate_run(args.run_dir, key_dir, config=cfg, data=args.data, out=args.out)
    for r in res.rounds:
        _out(
            f"round {r.round}: held-out accuracy "
            + (f"{r.accuracy:.4f}" if r.accuracy is not None else "-")
            + f"  ({r.accepted}/{r.sampled} updates)"
        )
    _out(
        f"evaluated on {res.metrics.get('heldout_examples')} held-out examples; outputs in "
        f"{res.run_dir}"
    )
    return 0


# ----------------------------------------------------------------------------- run
def _round_line(r: dict[str, Any]) -> str:
    eps = [c.get("epsilon") for c in r.get("clients", {}).values() if c.get("epsilon") is not None]
    acc = r.get("federated_accuracy")
    return (
        f"round {r['round']}: accepted {r['accepted']}/{r['sampled']}"
        + (f"  refused {r['refused']}" if r.get("refused") else "")
        + (f"  fed-acc {acc:.3f}" if acc is not None else "")
        + (f"  eps max {max(eps):.2f}" if eps else "")
        + f"  {r.get('seconds', 0.0):.1f}s"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from fedpriv.config import load_config
    from fedpriv.deploy.run import submit_run
    from fedpriv.errors import ConfigError, RunInterrupted
    from fedpriv.runs import check_run_dir, default_run_dir

    if args.resume:
        if args.config is not None or args.overrides:
            raise ConfigError("--resume continues a run with its own config: drop --config/--set")
        if args.out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the folder of the interrupted run)")
        cfg = load_config(check_run_dir(args.out, resume=True) / "config.toml")
    else:
        cfg = load_config(args.config, args.overrides)
    out = args.out or default_run_dir(cfg.name)
    _out(
        f"fedpriv run '{cfg.name}': {cfg.federation.num_clients} clients, {cfg.rounds} rounds, "
        f"DP={cfg.privacy.mode}, encryption={cfg.encryption.scheme}"
        + (f" -> {args.superlink}" if args.superlink else "")
        + (" (resumed)" if args.resume else "")
    )
    try:
        outcome = submit_run(
            args.superlink,
            args.bundle,
            cfg,
            run_dir=out,
            server_state=args.server_state,
            dealer_fingerprint=args.dealer_fingerprint,
            remote_bundle=args.remote_bundle,
            relay=not args.no_relay,
            node_wait_s=args.node_wait,
            timeout_s=args.timeout,
            progress=lambda r: _out(_round_line(r)),
            on_submitted=lambda task, rid: _out(f"submitted {task} run {rid}"),
            resume=args.resume,
        )
    except KeyboardInterrupt:
        superlink = f" --superlink {args.superlink}" if args.superlink else ""
        raise RunInterrupted(
            "the run was stopped on the SuperLink; continue it with `fedpriv run --resume "
            f"--out {out}{superlink} --bundle {args.bundle}`",
            out,
        ) from None
    if outcome.relay:
        _out(
            "sealed keys relayed: "
            + ", ".join(f"{c}={s}" for c, s in sorted(outcome.relay.items()))
        )
    m = outcome.metrics
    _out(
        f"run {outcome.run_id} {outcome.status} in {outcome.seconds:.1f}s; "
        f"{len(m.get('rounds', []))} rounds; outputs {outcome.run_dir}"
    )
    if m.get("stop_reason"):
        _out(f"stopped early: {m['stop_reason']}")
    if args.evaluate_bundle or args.evaluate_keys:
        from fedpriv.runs.evaluate import evaluate_run
        from fedpriv.runs.keys import key_dir_for

        key_dir = key_dir_for(bundle=args.evaluate_bundle, keys_dir=args.evaluate_keys)
        res = evaluate_run(outcome.run_dir, key_dir, config=cfg)
        _out(
            "held-out accuracy (decrypted by the key holder): "
            + (f"{res.final_accuracy:.4f}" if res.final_accuracy is not None else "-")
        )
    else:
        _out(
            "the server holds ciphertexts only: a key holder evaluates with "
            f"`fedpriv client evaluate --run-dir {outcome.run_dir} --bundle CLIENT_BUNDLE`"
        )
    return 0


# ----------------------------------------------------------------------------- parser
def add_deploy_commands(sub: Any) -> None:
    """Register ``keys``, ``server``, ``client`` and ``run`` on the top-level subparsers."""
    fp_help = "the dealer key fingerprint given to you out of band (default: pin on first use)"

    k = sub.add_parser("keys", help="key dealer: bundles for the server and each node")
    ks = k.add_subparsers(dest="keys_command", required=True)
    ki = ks.add_parser(
        "init",
        help="create a federation: HE keys, TLS CA + server certificate, node keys, signed bundles",
    )
    add_config_args(ki)
    ki.add_argument("--out", type=Path, required=True, help="output folder")
    ki.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="number of client bundles (default: federation.num_clients)",
    )
    ki.add_argument(
        "--server-host",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name or IP clients use to reach the server (repeatable; 127.0.0.1/localhost always)",
    )
    ki.add_argument(
        "--sealed",
        action="store_true",
        help="relay the HE secret sealed through the server instead of putting it in the client bundles",
    )
    ki.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="largest per-client example count (weight cap); default from the config's dataset",
    )
    ki.add_argument(
        "--max-clients",
        type=int,
        default=None,
        help="largest number of updates per round (default: max(nodes, clients per round))",
    )
    ki.add_argument(
        "--threshold",
        type=int,
        default=None,
        metavar="T",
        help="threshold custody: Shamir-share the HE secret, any T of the nodes decrypt together "
        "(sets encryption.key_custody=threshold; 0 = a majority)",
    )
    ki.add_argument("--force", action="store_true", help="replace a federation already in --out")
    ki.set_defaults(func=cmd_keys_init)

    ka = ks.add_parser("add-node", help="add a node to a federation and re-sign the server bundle")
    ka.add_argument("--out", type=Path, required=True, help="the folder `keys init` wrote")
    ka.add_argument("--client-id", default=None)
    ka.add_argument(
        "--sealed", action="store_true", help="relay its HE secret sealed through the server"
    )
    ka.add_argument(
        "--public-key",
        type=Path,
        default=None,
        help="node.pub made on the device with `fedpriv keys node-key`",
    )
    ka.set_defaults(func=cmd_keys_add_node)

    kn = ks.add_parser("node-key", help="make a node identity key on the device itself")
    kn.add_argument("--out", type=Path, required=True)
    kn.set_defaults(func=cmd_keys_node_key)

    kv = ks.add_parser("verify", help="verify a bundle's signature and file digests")
    kv.add_argument("--bundle", type=Path, required=True)
    kv.add_argument("--dealer-fingerprint", default=None, help=fp_help)
    kv.set_defaults(func=cmd_keys_verify)

    s = sub.add_parser("server", help="the SuperLink (server host)")
    ss = s.add_subparsers(dest="server_command", required=True)
    st = ss.add_parser(
        "start",
        help="start flower-superlink (TLS, node authentication) behind nginx, which exposes only "
        "the SuperNode routes; register the bundle's nodes",
    )
    st.add_argument("--bundle", type=Path, required=True, help="the server bundle")
    st.add_argument(
        "--address",
        default="127.0.0.1:9092",
        help="HOST:PORT for SuperNodes (0.0.0.0:PORT for all interfaces); Fleet API only",
    )
    st.add_argument(
        "--control-address",
        default=None,
        help="loopback HOST:PORT of the Control API for the operator (default: a free port on "
        "127.0.0.1; fix it, e.g. 127.0.0.1:9093, to reach it through an SSH tunnel)",
    )
    st.add_argument(
        "--state-dir", type=Path, default=None, help="default $FEDPRIV_HOME/server-<federation>"
    )
    st.add_argument("--dealer-fingerprint", default=None, help=fp_help)
    add_monitor_args(st, runs_dir=True)
    st.set_defaults(func=cmd_server_start)
    sr = ss.add_parser(
        "register", help="register nodes added to the bundle since the server started"
    )
    sr.add_argument("--bundle", type=Path, required=True)
    sr.add_argument(
        "--address",
        default=None,
        help="the Control API (default: the one `fedpriv server start` recorded in --state-dir)",
    )
    sr.add_argument("--state-dir", type=Path, default=None)
    sr.set_defaults(func=cmd_server_register)

    c = sub.add_parser("client", help="a SuperNode on an edge device, and key-holder evaluation")
    cs = c.add_subparsers(dest="client_command", required=True)
    cst = cs.add_parser(
        "start", help="start flower-supernode running the fedpriv ClientApp on local data"
    )
    cst.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    cst.add_argument("--bundle", type=Path, required=True, help="this node's client bundle")
    cst.add_argument(
        "--data",
        default=None,
        help="this device's data: a CSV file, an MNIST folder, or csv:PATH / mnist:PATH / hf:NAME / digits",
    )
    cst.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="owner-only state (keys, privacy accountant); default $FEDPRIV_HOME/<client-id>-<federation>",
    )
    cst.add_argument(
        "--partition-id",
        type=int,
        default=None,
        help="demo: train on this partition of the run's dataset instead of --data",
    )
    cst.add_argument("--num-partitions", type=int, default=None)
    cst.add_argument(
        "--node-key",
        type=Path,
        default=None,
        help="node identity key made on the device (when the bundle has none)",
    )
    cst.add_argument("--dealer-fingerprint", default=None, help=fp_help)
    cst.add_argument(
        "--runtime-port",
        type=int,
        default=None,
        help="local port of the SuperNode's Runtime API (default: a free port)",
    )
    cst.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the SuperLink to accept the node",
    )
    cst.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="this device's privacy policy (JSON, see docs/deployment.md); default: at most"
        " epsilon 10 per run and over all runs, delta 1e-5, DP required, k_min 2",
    )
    cst.add_argument(
        "--max-epsilon",
        type=float,
        default=None,
        help="record-level epsilon any one run may spend here (tightens the policy)",
    )
    cst.add_argument(
        "--max-lifetime-epsilon",
        type=float,
        default=None,
        help="record-level epsilon all runs on this data may spend together (tightens the policy)",
    )
    cst.add_argument(
        "--max-delta", type=float, default=None, help="refuse runs asking for a larger delta"
    )
    cst.add_argument(
        "--min-noise-multiplier",
        type=float,
        default=None,
        help="refuse runs whose DP-SGD noise multiplier is smaller",
    )
    cst.add_argument(
        "--min-clients-per-aggregate",
        type=int,
        default=None,
        help="never train from an aggregate of fewer updates (k_min)",
    )
    cst.add_argument(
        "--allowed-modes",
        default=None,
        help="comma-separated privacy modes this device takes part in (record,both,client)",
    )
    cst.add_argument(
        "--allowed-custody",
        default=None,
        help="comma-separated key custodies this device takes part in (shared,threshold)",
    )
    cst.add_argument(
        "--require-rebuilt-aggregate",
        action="store_true",
        help="threshold custody: partially decrypt only aggregates this device rebuilt from the"
        " round's signed updates (closes a forged-aggregate attack; downloads every update)",
    )
    cst.add_argument(
        "--insecure-test-seed",
        type=int,
        default=None,
        metavar="N",
        help="tests only: draw this device's DP randomness from a seed instead of the OS CSPRNG;"
        " every record says so and the run is marked NOT private",
    )
    cst.add_argument(
        "--schema",
        type=Path,
        default=None,
        help="this device's data schema (fedpriv data schema infer): the device checks its data "
        "before every round and refuses to train on a violation, naming only the failed checks",
    )
    cst.add_argument(
        "--cold",
        action="store_true",
        help="no warm ClientApp server: a fresh process per message (less idle memory, more CPU per round)",
    )
    cst.set_defaults(func=cmd_client_start)
    lh = cs.add_parser(
        "ledger-head",
        help="export this device's signed ledger head, so a report missing its latest records fails",
    )
    lh.add_argument("--state-dir", type=Path, required=True, help="the device's state folder")
    lh.add_argument("--run-id", default=None, help="the run (default: the latest one)")
    lh.add_argument("--out", type=Path, required=True, help="where to write the head (JSON)")
    lh.set_defaults(func=cmd_client_ledger_head)
    ce = cs.add_parser(
        "evaluate", help="as a key holder: decrypt a run's global models and evaluate them"
    )
    ce.add_argument("--run-dir", type=Path, required=True, help="a copy of the server's run folder")
    ce.add_argument(
        "--bundle", type=Path, default=None, help="a client bundle holding the HE secret"
    )
    ce.add_argument(
        "--state-dir", type=Path, default=None, help="a device state folder (sealed delivery)"
    )
    ce.add_argument(
        "--keys-dir", type=Path, default=None, help="any folder with params.json + secret.key"
    )
    ce.add_argument(
        "--data", default=None, help="held-out data (default: the config dataset's held-out split)"
    )
    ce.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the run folder)"
    )
    add_config_args(ce)
    ce.set_defaults(func=cmd_client_evaluate)

    r = sub.add_parser(
        "run", help="submit a training run to the SuperLink and wait for its real final status"
    )
    r.add_argument(
        "--superlink",
        default=None,
        help="the SuperLink's Control API (default: the one `fedpriv server start` recorded in "
        "its state folder; its public address means the same)",
    )
    r.add_argument("--bundle", type=Path, required=True, help="the server bundle")
    add_config_args(r)
    r.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder on the server host (default runs/<timestamp>-<name>)",
    )
    r.add_argument(
        "--server-state",
        type=Path,
        default=None,
        help="`fedpriv server start`'s --state-dir (registered node ids)",
    )
    r.add_argument("--dealer-fingerprint", default=None, help=fp_help)
    r.add_argument(
        "--remote-bundle",
        default=None,
        help="the server bundle's path on the SuperLink host, if different",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last server checkpoint (its own "
        "config; no --config/--set)",
    )
    r.add_argument(
        "--no-relay", action="store_true", help="do not relay sealed keys before training"
    )
    r.add_argument(
        "--node-wait", type=float, default=600.0, help="seconds the server waits for all nodes"
    )
    r.add_argument(
        "--timeout",
        type=float,
        default=6 * 3600.0,
        help="give up (and stop the run) after this many seconds",
    )
    r.add_argument(
        "--evaluate-bundle",
        type=Path,
        default=None,
        help="also decrypt and evaluate with this client bundle (operator is a data owner)",
    )
    r.add_argument(
        "--evaluate-keys",
        type=Path,
        default=None,
        help="same, with a key folder (e.g. the dealer folder)",
    )
    r.set_defaults(func=cmd_run)
