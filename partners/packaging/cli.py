"""`mediagate package DIR -o model.oci.tar`: build a package with a progress bar."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from partners.packaging.build import BuildResult, build_package
from partners.packaging.rules import PackageRejected


def package_command(directory: Path | str, output: Path | str | None = None, *,
                    console: Console | None = None) -> BuildResult:
    """Build `directory` into an OCI archive (default `<dir name>.oci.tar`) and print a summary.

    A rejected directory prints the reason and the file at fault and exits with status 1.
    """
    console = console or Console()
    directory = Path(directory)
    out = Path(output) if output is not None else Path.cwd() / f"{directory.resolve().name}.oci.tar"
    columns = (TextColumn("[bold]packaging"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("package", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = build_package(directory, out, progress=progress)
    except PackageRejected as exc:
        where = f" ({exc.entry})" if exc.entry else ""
        console.print(f"[red]cannot package {directory}[/red]: {exc.message}{where}")
        raise SystemExit(1) from exc
    m = result.manifest
    console.print(f"[green]packaged[/green] {m.name} -> {result.path}")
    console.print(f"  digest      {result.digest}")
    console.print(f"  size        {result.size:,} bytes, {result.files} files in {len(result.layers)} layers")
    console.print(f"  entrypoint  {m.entrypoint} ({m.method})")
    console.print(f"  inputs      {', '.join(m.inputs_schema.get('properties', {})) or '(none)'}")
    return result
