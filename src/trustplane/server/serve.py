"""Run a serving node under uvicorn: one process, or several workers behind one socket.

With `workers` > 1, uvicorn's supervisor spawns fresh interpreters that rebuild the app from
the settings passed in the environment, and restarts a worker that dies. The supervisor is the
bundle authority: it activates the directory's bundle before the workers start and again on
SIGHUP, and the workers serve the store's newest activation and follow every later one (see
BundleManager.follow), so a restarted worker never undoes a rollback. The workers share the
store: the ledger serialises their appends.

Start-up order (server/ports.py has the why): the parent binds the HTTP socket and claims the
gRPC port before anything else, refusing with one line if either is held; each serving process
starts its app, listens on HTTP, and only then starts ext_authz gRPC and the Workload API
(`app.state.listeners`), so nothing takes traffic for a server that is not whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from trustplane.config import ConfigError, Settings
from trustplane.decision.manager import BundleManager, reload_or_log
from trustplane.decision.policy_bundle import BUNDLE_SUFFIXES, BundleError, BundleSource
from trustplane.enforcement.pep import check_listen_policy
from trustplane.errors import TrustplaneError
from trustplane.identity.kek import load_kek
from trustplane.posture.packs import check_admission_settings
from trustplane.server.app import create_app
from trustplane.server.listening import ListeningServer, use_listening_workers
from trustplane.server.pep_gate import PepClientTrust, TlsPeerProtocol, client_ca_file
from trustplane.server.ports import ClaimedPorts, claim_ports
from trustplane.server.runtime import Runtime, load_options
from trustplane.server.tls import serving_certificate
from trustplane.store.database import create_store_engine, migrate
from trustplane.store.policy_revisions import BundleStore
from trustplane.telemetry.logs import configure_logging
from trustplane.telemetry.metrics import MULTIPROCESS_ENV, Metrics, multiprocess_dir

WORKER_SETTINGS_ENV = "_TRUSTPLANE_WORKER_SETTINGS"  # outside TRUSTPLANE_*: not a setting


log = logging.getLogger("trustplane.server")


def preflight(settings: Settings) -> None:
    """Refuse, in one line each, what would leave a server up but unable to serve: checked
    before anything is created or listens (`trustplane serve` runs it before `--init`)."""
    require_bundle_dir(settings.policy.bundle_dir)
    check_admission_settings(settings.admission)
    if settings.identity.configured:
        load_kek(settings.identity)  # a KEK file others may read, or none where one is configured


def require_bundle_dir(directory: Path | None) -> None:
    """A directory holding bundle files. Their content is not judged here: a broken bundle is
    refused by the bundle manager, which keeps the last good one serving."""
    if directory is None:
        raise ConfigError(
            "no bundle: pass --bundle DIR or set bundle_dir / TRUSTPLANE_POLICY__BUNDLE_DIR"
        )
    if not directory.exists():
        raise ConfigError(f"bundle directory {directory} does not exist")
    if not directory.is_dir():
        raise ConfigError(f"bundle directory {directory} is not a directory")
    try:
        files = BundleSource.from_dir(directory).files
    except BundleError:
        return  # too large, say: the manager refuses it with every problem named
    except OSError as exc:
        raise ConfigError(f"bundle directory {directory} cannot be read: {exc.strerror}") from None
    if not files:
        kinds = ", ".join(f"*{suffix}" for suffix in BUNDLE_SUFFIXES)
        raise ConfigError(f"bundle directory {directory} holds no bundle files ({kinds})")


def serve(settings: Settings) -> None:
    check_listen_policy(settings)
    preflight(settings)
    _configure_logging(settings)
    if settings.log_format == "json":  # the CLI's banner, as a log line
        log.info(
            "trustplane serving %s on port %d (ledger: %s, workers: %d)",
            settings.policy.bundle_dir,
            settings.server.port,
            settings.ledger.durability.value,
            settings.server.workers,
        )
    ports = claim_ports(settings)  # before anything starts: a held port refuses here
    try:
        if settings.server.workers == 1:
            server = ListeningServer(_uvicorn_config(settings, create_app(Runtime(settings))))
            server.run(sockets=[ports.http])
            if server.failed_to_start is not None:
                raise ServeError(server.failed_to_start)
            return
        _serve_workers(settings, ports)
    finally:
        ports.close()


class ServeError(TrustplaneError):
    """The server could not start serving; the message says why (the log has details)."""


def _serve_workers(settings: Settings, ports: ClaimedPorts) -> None:
    authority = _BundleAuthority(settings)  # migrates the store and activates the bundle
    metrics_dir = multiprocess_dir(settings.state_dir)
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at zero, like one process
    metrics_dir.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROCESS_ENV] = str(metrics_dir)
    os.environ[WORKER_SETTINGS_ENV] = _worker_settings(settings)
    config = _uvicorn_config(settings, "trustplane.server.serve:worker_app", factory=True)
    supervisor = _Supervisor(config, sockets=[ports.http], on_hup=authority.reload)
    try:
        supervisor.run()
    finally:
        authority.close()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise ServeError("a worker process failed to start; its error is in the log above")


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, with SIGHUP reloading the bundle instead of restarting workers,
    and workers that start the app's other listeners once HTTP listens."""

    def __init__(self, config: uvicorn.Config, sockets: list[Any], on_hup: Any) -> None:
        super().__init__(config, sockets)
        self._on_hup = on_hup
        use_listening_workers()

    def handle_hup(self) -> None:
        self._on_hup("sighup")


class _BundleAuthority:
    """The supervisor's view of the store: activates the directory's bundle for the workers."""

    def __init__(self, settings: Settings) -> None:
        self._engine = create_store_engine(settings.effective_database_url)
        migrate(self._engine)  # once, before the workers open the store side by side
        self._bundles = BundleManager(
            BundleStore(self._engine),
            load_options(settings.policy),
            Metrics(),
            bundle_dir=settings.policy.bundle_dir,
        )
        self._bundles.start()

    def reload(self, reason: str) -> None:
        reload_or_log(self._bundles, reason)

    def close(self) -> None:
        self._engine.dispose()


def _worker_settings(settings: Settings) -> str:
    """The settings as JSON for the workers. Secret values dump masked ("**********"), so the
    KEK (and the CLI's admin token) is written out as itself: a worker given the mask could not
    open the trust domain's keys (it came from this process's environment or config file, which
    the workers see too)."""
    values = json.loads(settings.model_dump_json())
    if settings.identity.kek is not None:
        values["identity"]["kek"] = settings.identity.kek.get_secret_value()
    if settings.cli.admin_token is not None:
        values["cli"]["admin_token"] = settings.cli.admin_token.get_secret_value()
    return json.dumps(values)


def worker_app() -> Starlette:
    """The app of one worker process (uvicorn calls this in each spawned interpreter)."""
    settings = Settings.model_validate_json(os.environ[WORKER_SETTINGS_ENV])
    _configure_logging(settings)
    return create_app(Runtime(settings))


def _uvicorn_config(settings: Settings, app: Any, factory: bool = False) -> uvicorn.Config:
    tls = serving_certificate(settings)
    # PEPs may authenticate with a client certificate of the trust domain (server/pep_gate.py).
    client_ca = client_ca_file(settings) if tls else None
    context_factory = tls.context_factory if tls else None
    if client_ca is not None:
        context_factory = PepClientTrust(context_factory)
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through ours (telemetry/logs.py), in its format
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # A new worker answers its supervisor's health check only once its interpreter has
        # imported uvicorn; on a loaded host that took more than uvicorn's 5 s, and the
        # supervisor killed and restarted workers that were merely slow, over and over.
        timeout_worker_healthcheck=30,
        server_header=False,
        factory=factory,
        workers=settings.server.workers,
        ssl_certfile=tls.cert_file if tls else None,
        ssl_keyfile=tls.key_file if tls else None,
        ssl_context_factory=context_factory,
        ssl_cert_reqs=ssl.CERT_OPTIONAL if client_ca else ssl.CERT_NONE,
        ssl_ca_certs=str(client_ca) if client_ca else None,
        http=TlsPeerProtocol if client_ca else "auto",
    )


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
