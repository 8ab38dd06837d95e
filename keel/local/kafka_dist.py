"""Apache Kafka's jars, fetched from Maven Central through the pom kept beside this module
and cached under KEEL_HOME (outside the work tree), plus the Java they run on."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

from keel.errors import LocalStackError

MIN_JAVA = 17
Progress = Callable[[str], None]


def _resource(name: str) -> Path:
    return Path(str(resources.files("keel.local") / "kafka" / name))


def log4j_config() -> Path:
    return _resource("log4j2.yaml")


def java_binary() -> str:
    """The `java` to run Kafka with; one clear error if it is missing or too old."""
    java = shutil.which("java")
    if java is None:
        raise LocalStackError(
            f"Java {MIN_JAVA}+ is needed to run Kafka, and no `java` is on PATH "
            "(apt-get install openjdk-17-jre-headless)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise LocalStackError(f"could not tell the Java version of {java}: {out.stderr.strip()}")
    major = int(match.group(1))
    if major == 1:  # "1.8.0" style
        major = int(match.group(2) or 0)
    if major < MIN_JAVA:
        raise LocalStackError(f"Kafka 4 needs Java {MIN_JAVA} or newer; {java} is Java {major}")
    return java


def kafka_libs(
    home: Path, version: str, progress: Progress = print, maven_settings: Path | None = None
) -> Path:
    """The folder of jars for this Kafka version, fetching them on first use."""
    return maven_jars(
        _resource("pom.xml"),
        home / "kafka" / version / "libs",
        what=f"Kafka {version}",
        must_have=f"kafka_2.13-{version}.jar",
        properties={"kafka.version": version},
        progress=progress,
        maven_settings=maven_settings,
    )


def maven_jars(
    pom: Path,
    libs: Path,
    *,
    what: str,
    must_have: str,
    properties: Mapping[str, str] | None = None,
    progress: Progress = print,
    maven_settings: Path | None = None,
) -> Path:
    """`pom`'s runtime dependencies copied into `libs` by Maven, once: a marker file says the
    folder is complete, so a second call fetches nothing; a failed fetch leaves no folder."""
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalStackError(
            f"Maven (`mvn`) is needed once to fetch the jars of {what} and is not on PATH "
            "(apt-get install maven)"
        )
    progress(f"fetching {what} jars from Maven Central into {libs} ...")
    staging = libs.with_name(libs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        *(["-s", str(maven_settings)] if maven_settings else []),
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
        *(f"-D{key}={value}" for key, value in (properties or {}).items()),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalStackError(
            f"could not fetch {what} from Maven Central: {_mvn_reason(result.stdout + result.stderr)}"
        )
    if not (staging / must_have).exists():
        raise LocalStackError(f"Maven finished but {must_have} is missing in {staging}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    marker.touch()
    progress(f"cached {sum(1 for _ in libs.glob('*.jar'))} jars")
    return libs


def _mvn_reason(output: str) -> str:
    """The one line of Maven's output that says why, without its noise."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in output.splitlines()]
    for pattern in ("Unknown host", "Could not transfer", "Could not resolve", "Could not find"):
        for line in lines:
            if pattern in line:
                return line.removeprefix("[ERROR] ")
    errors = [ln.removeprefix("[ERROR] ") for ln in lines if ln.startswith("[ERROR]")]
    return errors[0] if errors else (lines[-1] if lines else "mvn failed")


def classpath(libs: Path) -> str:
    return f"{libs}/*"
