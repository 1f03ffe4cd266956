"""A local, single-node OpenSearch for tests, benchmarks and the demo: no Docker, no service manager.

`make opensearch` fetches from Maven Central (jvm/opensearch/pom.xml) the integ-test distribution, the jars of
two modules that distribution leaves out (analysis-common: the language analyzers; lang-painless: scripting,
which the k-NN plugin extends) and the k-NN plugin of the same release into `.opensearch/`. `prepare_home`
assembles them once into `.opensearch/home-<version>`; `LocalOpenSearch` starts a node from it on a free
loopback port with its own temporary config/data/log folder, security off, single-node discovery, small heap,
and stops exactly that process. OpenSearch refuses to run as root, so under root the node runs as `nobody`.

    python -m rag_spark.index.opensearch_node   # starts a node, prints its URL, stops on Ctrl-C
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

VERSION = "2.19.1"
KNN_VERSION = "2.19.1.0"
ASM = ["asm", "asm-util", "asm-tree", "asm-commons", "asm-analysis"]

# Module descriptors as the full distribution ships them (the Maven jars do not carry them).
_MODULES = {
    "lang-painless": {
        "classname": "org.opensearch.painless.PainlessPlugin",
        "description": "An easy, safe and fast scripting language for OpenSearch",
        "extended.plugins": "",
        "jars": [f"lang-painless-{VERSION}.jar", f"opensearch-scripting-painless-spi-{VERSION}.jar",
                 "antlr4-runtime-4.13.1.jar", *[f"{a}-9.7.jar" for a in ASM]],
        # painless compiles scripts to classes in its own loader
        "policy": 'grant {\n  permission java.lang.RuntimePermission "createClassLoader";\n'
                  '  permission java.lang.RuntimePermission "getClassLoader";\n};\n',
    },
    "analysis-common": {
        "classname": "org.opensearch.analysis.common.CommonAnalysisPlugin",
        "description": "Adds analyzers, tokenizers and filters (language analyzers among them)",
        "extended.plugins": "lang-painless",
        "jars": [f"analysis-common-{VERSION}.jar"],
        "policy": "",
    },
}  # fmt: skip


def artifacts_dir() -> Path:
    """Where `make opensearch` puts the Maven artifacts (`RAG_SPARK_OPENSEARCH_DIR` overrides)."""
    env = os.environ.get("RAG_SPARK_OPENSEARCH_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".opensearch"


def prepare_home(artifacts: Path | None = None) -> Path:
    """The assembled OpenSearch home (distribution + modules + k-NN plugin), made once and reused.

    Raises:
        FileNotFoundError: naming the missing artifact and `make opensearch`.
    """
    art = artifacts or artifacts_dir()
    home = art / f"home-{VERSION}"
    if (home / ".ready").is_file():
        return home
    dist = art / f"opensearch-{VERSION}.zip"
    needed = [dist, art / f"opensearch-knn-{KNN_VERSION}.zip", *(art / j for m in _MODULES.values() for j in m["jars"])]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"OpenSearch artifacts missing in {art}: {', '.join(missing)} (run `make opensearch`)")
    work = Path(tempfile.mkdtemp(prefix=f".home-{VERSION}-", dir=art))
    with zipfile.ZipFile(dist) as z:
        z.extractall(work)
    src = work / f"opensearch-{VERSION}"
    for name, spec in _MODULES.items():
        mdir = src / "modules" / name
        mdir.mkdir(parents=True)
        for jar in spec["jars"]:
            shutil.copy2(art / jar, mdir / jar)
        props = {
            "description": spec["description"],
            "version": VERSION,
            "name": name,
            "classname": spec["classname"],
            "java.version": "11",
            "opensearch.version": VERSION,
            "extended.plugins": spec["extended.plugins"],
            "has.native.controller": "false",
        }
        (mdir / "plugin-descriptor.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        if spec["policy"]:
            (mdir / "plugin-security.policy").write_text(str(spec["policy"]))
    for f in (src / "bin").iterdir():
        f.chmod(0o755)
    knn = art / f"opensearch-knn-{KNN_VERSION}.zip"
    subprocess.run(
        [str(src / "bin" / "opensearch-plugin"), "install", "--batch", f"file://{knn.resolve()}"],
        check=True, capture_output=True, timeout=300, env=_env(OPENSEARCH_JAVA_OPTS="-Xmx256m"),
    )  # fmt: skip
    (src / ".ready").write_text(VERSION + "\n")
    os.chmod(src, 0o755)
    try:
        src.rename(home)
    except OSError:  # another process assembled it meanwhile
        if not (home / ".ready").is_file():
            raise
    shutil.rmtree(work, ignore_errors=True)
    return home


def _readable_by_others(home: Path) -> Path:
    """`home`, or a world-readable copy of it under the temp folder when `nobody` could not reach it (a checkout
    under /root, mode 700). The copy is made once per version and reused."""
    if all(p.stat().st_mode & 0o001 for p in home.resolve().parents):
        return home
    shared = Path(tempfile.gettempdir()) / f"rag-spark-opensearch-home-{VERSION}"
    if not (shared / ".ready").is_file():
        work = Path(tempfile.mkdtemp(prefix=f".rag-spark-opensearch-home-{VERSION}-"))
        shutil.copytree(home, work / "home", symlinks=True)
        os.chmod(work, 0o755)
        try:
            (work / "home").rename(shared)
        except OSError:  # another process copied it meanwhile
            if not (shared / ".ready").is_file():
                raise
        shutil.rmtree(work, ignore_errors=True)
    log.info("OpenSearch home copied to %s: nobody cannot reach %s", shared, home)
    return shared


def java_home() -> str:
    """The JDK the node runs on (the integ-test distribution bundles none): `OPENSEARCH_JAVA_HOME`, `JAVA_HOME`,
    or the one `java` on PATH belongs to."""
    for var in ("OPENSEARCH_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            return os.environ[var]
    java = shutil.which("java")
    if java is None:
        raise FileNotFoundError("no Java found for OpenSearch: install a JDK 17+ or set OPENSEARCH_JAVA_HOME")
    return str(Path(java).resolve().parents[1])


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OPENSEARCH_JAVA_HOME": java_home(), **extra}
    env.pop("JAVA_TOOL_OPTIONS", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalOpenSearch:
    """One OpenSearch node on 127.0.0.1, started by `start()` (or `with`), stopped and removed by `stop()`."""

    def __init__(self, heap: str = "512m", startup_timeout: float = 180.0, port: int | None = None) -> None:
        """Args:
        port: the HTTP port (None: a free one)."""
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.fixed_port = port
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalOpenSearch:
        home = prepare_home()
        self.tmp = Path(tempfile.mkdtemp(prefix="rag-spark-os-"))
        conf = self.tmp / "config"
        shutil.copytree(home / "config", conf)
        self.port = self.fixed_port or free_port()
        transport = free_port()
        (conf / "opensearch.yml").write_text(
            "cluster.name: rag-spark-test\n"
            "node.name: local\n"
            "network.host: 127.0.0.1\n"
            f"http.port: {self.port}\n"
            f"transport.port: {transport}\n"
            "discovery.type: single-node\n"
            f"path.data: {self.tmp / 'data'}\n"
            f"path.logs: {self.tmp / 'logs'}\n"
            # the tests fill a small disk-usage budget; watermarks would make a busy shared disk read-only
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
            "action.auto_create_index: false\n"
        )
        # No GC log, heap dumps or crash files in the working directory: a test node has a folder of its own.
        jvm = conf / "jvm.options"
        keep = [
            ln for ln in jvm.read_text().splitlines() if not any(t in ln for t in ("Xlog", "HeapDump", "ErrorFile"))
        ]
        jvm.write_text("\n".join(keep) + "\n")
        for d in ("data", "logs"):
            (self.tmp / d).mkdir()
        as_user: list[str] = []
        if os.geteuid() == 0:  # OpenSearch refuses to run as root
            home = _readable_by_others(home)
            pw = pwd.getpwnam("nobody")
            for p in [self.tmp, *self.tmp.rglob("*")]:
                os.chown(p, pw.pw_uid, pw.pw_gid)
            as_user = ["runuser", "-u", "nobody", "--"]
        env = _env(
            OPENSEARCH_PATH_CONF=str(conf),
            OPENSEARCH_JAVA_OPTS=f"-Xms256m -Xmx{self.heap} -XX:-HeapDumpOnOutOfMemoryError",
        )
        self.proc = subprocess.Popen(
            [*as_user, str(home / "bin" / "opensearch")],
            env=env,
            cwd=self.tmp,
            stdout=(self.tmp / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals the node and nothing else
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = (self.tmp / "stdout.log").read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"OpenSearch exited with {self.proc.returncode} during startup:\n{out}")
            try:
                with urllib.request.urlopen(f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=1s", timeout=3):
                    log.info("OpenSearch %s up at %s", VERSION, self.url)
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"OpenSearch did not answer on {self.url} within {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        """Stops the node this object started (its process group only) and removes its folder."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> LocalOpenSearch:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="start a local OpenSearch node until Ctrl-C")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")
    parser.add_argument("--heap", default="512m")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    node = LocalOpenSearch(heap=args.heap, port=args.port).start()
    print(node.url, flush=True)
    # Both explicitly: a shell's background job inherits SIGINT ignored, and Python then never raises on it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
