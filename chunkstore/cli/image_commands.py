"""Image commands: ``backup``, ``restore``, ``tags``, ``ls-image``, ``cat``, ``diff`` and
``image-stats``."""

from __future__ import annotations

import sys

import click

from chunkstore import api, browse
from chunkstore.cli.context import Ctx, pass_ctx
from chunkstore.errors import UsageError
from chunkstore.images.backup import backup_image
from chunkstore.images.recompress import DEFAULT_GZIP_LEVEL
from chunkstore.images.restore import restore_image
from chunkstore.metadata import format_errors
from chunkstore.publish import publish_names
from index.image import ImageBody
from index.tree import Node

__all__ = [
    "backup",
    "cat_cmd",
    "diff_cmd",
    "image_stats_cmd",
    "ls_image",
    "restore",
    "tags_cmd",
]


@click.command()
@click.argument("source")
@click.option("--tag", "-t", required=True, help="Record name for this image.")
@click.option(
    "--platform", help="Only this platform of a multi-platform image (os/arch[/variant])."
)
@click.option(
    "--accept-new-digests",
    is_flag=True,
    help="Do not store the original bytes of layers that no known compressor reproduces: "
    "saves their compressed size, but their restore recompresses them, so the image gets a new "
    "manifest digest (same image ID).",
)
@click.option(
    "--no-detect",
    is_flag=True,
    hidden=True,
    help="Benchmarks: do not look for the layers' compressors (implies --accept-new-digests).",
)
@pass_ctx
def backup(
    c: Ctx,
    source: str,
    tag: str,
    platform: str | None,
    accept_new_digests: bool,
    no_detect: bool,
) -> None:
    """Back up an image as TAG.

    SOURCE is oci:DIR[:REF], docker-archive:FILE[:REF], dir:PATH or
    docker://HOST[:PORT]/NAME[:TAG|@DIGEST] (a registry; --plain-http for HTTP).
    Every layer comes back with its original digest: its compressor is recognised while it is
    read (Go, klauspost/pgzip, zlib, GNU gzip, pigz, zstd), or its compressed bytes are kept.
    """
    with c.open() as repo, c.bytes_progress(None, tag) as tick, api.locked(repo, exclusive=False):
        result = backup_image(
            repo,
            source,
            tag,
            platform=platform,
            progress=tick,
            progress_total=tick.set_total,
            remote=c.remote,
            keep_originals=not (accept_new_digests or no_detect),
            detect=not no_detect,
        )
        published = publish_names(repo, {tag})  # a registry repository shows TAG as a tag
    for name in published.unpublishable:
        c.warn(f"{name!r} is not a valid registry tag: the image is stored but has no image tag")
    info = {
        "id": result.record_id.hex,
        "tag": tag,
        "images": result.images,
        "layers": result.layers,
        "tar_bytes": result.tar_bytes,
        "new_bytes": result.new_bytes,
        "stored_bytes": result.stored_bytes,
        "reproducible_layers": result.reproducible_layers,
        "kept_layers": result.kept_layers,
        "kept_bytes": result.kept_bytes,
        "notes": result.notes,
        "layer_details": [
            {
                "digest": r.digest,
                "outcome": r.outcome,
                "reproduced_by": r.how or None,
                "kept_new_bytes": r.kept_new_bytes,
                "reused": r.reused,
            }
            for r in result.layer_reports
        ],
    }
    lines = [
        f"backed up {source} as {tag}: {result.layers} layer(s), {result.tar_bytes} tar bytes, "
        f"{result.new_bytes} new, {result.stored_bytes} written (record {result.record_id.short})"
    ]
    for r in result.layer_reports:
        what = {
            "reproduced": f"reproduced by {r.how}",
            "kept": f"kept as stored ({r.kept_new_bytes} new bytes)",
            "uncompressed": "uncompressed",
            "new-digest": "will be recompressed (new digest)",
        }[r.outcome]
        lines.append(f"  {r.digest[:19]}  {what}{' (already stored)' if r.reused else ''}")
    c.emit(info, "\n".join(lines))
    for note in result.notes:
        c.warn(note)


@click.command()
@click.argument("name")
@click.argument("target")
@click.option(
    "--platform",
    help="The platform to restore (docker-archive: and dir: take one; docker:// may).",
)
@click.option("--force", is_flag=True, help="Write into a non-empty directory / over a file.")
@click.option(
    "--allow-special", is_flag=True, help="dir: create device nodes and keep setuid (root only)."
)
@click.option("--no-preserve-owner", is_flag=True, help="dir: do not restore uid/gid.")
@click.option(
    "--gzip-level",
    type=click.IntRange(1, 9),
    default=DEFAULT_GZIP_LEVEL,
    show_default=True,
    help="zlib level for gzip layers whose original compressor cannot be reproduced "
    "(6 gives about 5% smaller layers for 2.8x the CPU).",
)
@pass_ctx
def restore(
    c: Ctx,
    name: str,
    target: str,
    platform: str | None,
    force: bool,
    allow_special: bool,
    no_preserve_owner: bool,
    gzip_level: int,
) -> None:
    """Restore image NAME into TARGET.

    TARGET is oci:DIR[:REF], docker-archive:FILE[:TAG], dir:PATH or
    docker://HOST[:PORT]/NAME[:TAG] (pushed to a registry; --plain-http for HTTP).
    """
    with c.open() as repo:
        result = restore_image(
            repo,
            name,
            target,
            platform=platform,
            force=force,
            allow_special=allow_special,
            preserve_owner=not no_preserve_owner,
            remote=c.remote,
            gzip_level=gzip_level,
        )
    for note in result.notes:  # skipped entries among them, each named once
        c.warn(note)
    done = result.extracted
    if done is None:
        c.emit(
            {
                "images": result.images,
                "layers": result.layers,
                "exact_layers": result.exact_layers,
                "manifest_rewritten": result.manifest_rewritten,
            },
            f"restored {name} to {target}: {result.layers} layer(s), "
            f"{result.exact_layers} with their original digest",
        )
        return
    counts = (
        (done.dirs, "directory", "directories"),
        (done.symlinks, "symlink", "symlinks"),
        (done.hardlinks, "hard link", "hard links"),
        (done.others, "other entry", "other entries"),
        (len(done.skipped), "entry not created", "entries not created"),
    )
    c.emit(
        {
            "files": done.files,
            "bytes": done.bytes,
            "dirs": done.dirs,
            "symlinks": done.symlinks,
            "hardlinks": done.hardlinks,
            "others": done.others,
            "skipped": done.skipped,
            "warnings": done.warnings,
        },
        f"restored {name} to {target}: {done.files} file{'' if done.files == 1 else 's'} "
        f"({done.bytes} bytes)"
        + "".join(f", {n} {one if n == 1 else many}" for n, one, many in counts if n),
    )


_TYPE_CHARS = {0: "-", 1: "d", 2: "l", 3: "c", 4: "b", 5: "p"}


def _node_json(node: Node) -> dict[str, object]:
    return {
        "name": node.name.decode("utf-8", "surrogateescape"),
        "type": node.type.name.lower(),
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "size": node.size,
        "mtime_ns": node.mtime_ns,
        "target": node.target.decode("utf-8", "surrogateescape") or None,
    }


@click.command("tags")
@pass_ctx
def tags_cmd(c: Ctx) -> None:
    """List image records (tags)."""
    rows: list[dict[str, object]] = []
    with c.open() as repo:
        # One listing: each record is read once (looking each one up again by its id read
        # every record per row, a cost that grew with the square of the number of tags).
        for record_id, record in repo.list_records():
            if record.type != "image":
                continue
            with format_errors(f"record {record_id.short} body"):
                body = ImageBody.from_cbor(record.body)
            layers = [layer for im in body.images for layer in im.layers]
            rows.append(
                {
                    "id": record_id.hex,
                    "name": record.name,
                    "type": record.type,
                    "time_ns": record.time_ns,
                    "size": record.body.get("size") if isinstance(record.body, dict) else None,
                    "layers": [
                        {
                            "outcome": layer.outcome,
                            "reproduced_by": layer.reproduce.label if layer.reproduce else None,
                        }
                        for layer in layers
                    ],
                    "exact": all(layer.exact for layer in layers),
                }
            )
    lines = []
    for r in rows:
        counts: dict[str, int] = {}
        for layer in r["layers"]:  # type: ignore[attr-defined]
            counts[layer["outcome"]] = counts.get(layer["outcome"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        lines.append(f"{str(r['id'])[:12]}  {r['name']}  ({summary})")
    c.emit(rows, "\n".join(lines) or "(no images)")


@click.command("ls-image")
@click.argument("name")
@click.argument("path", default="/")
@click.option("--platform", help="Platform of a multi-platform image (os/arch[/variant]).")
@pass_ctx
def ls_image(c: Ctx, name: str, path: str, platform: str | None) -> None:
    """List PATH (default /) inside image NAME."""
    with c.open() as repo:
        image = browse.open_image(repo, name, platform)
        nodes = browse.list_path(repo, image.root, path)
    lines = [
        f"{_TYPE_CHARS[int(n.type)]}{n.mode:04o} {n.uid:>5}:{n.gid:<5} {n.size:>12}  "
        + n.name.decode("utf-8", "surrogateescape")
        + (" -> " + n.target.decode("utf-8", "surrogateescape") if n.target else "")
        for n in nodes
    ]
    c.emit([_node_json(n) for n in nodes], "\n".join(lines))
    for note in image.view_notes:
        c.warn(note)


@click.command("cat")
@click.argument("name")
@click.argument("path")
@click.option("--platform", help="Platform of a multi-platform image (os/arch[/variant]).")
@pass_ctx
def cat_cmd(c: Ctx, name: str, path: str, platform: str | None) -> None:
    """Write the file PATH of image NAME to stdout (verified)."""
    with c.open() as repo:
        image = browse.open_image(repo, name, platform)
        node = browse.resolve_path(repo, image.root, path)
        if node is None:
            raise UsageError("the image root is a directory; give a file path")
        out = sys.stdout.buffer
        for data in browse.read_file(repo, node):
            out.write(data)
        out.flush()


@click.command("diff")
@click.argument("name1")
@click.argument("name2")
@pass_ctx
def diff_cmd(c: Ctx, name1: str, name2: str) -> None:
    """Files added, removed and changed from image NAME1 to NAME2."""
    with c.open() as repo:
        a, b = browse.open_image(repo, name1), browse.open_image(repo, name2)
        changes = list(browse.diff_images(repo, a.root, b.root))
    marks = {"added": "+", "removed": "-", "changed": "M"}
    c.emit(
        [{"kind": ch.kind, "path": ch.path} for ch in changes],
        "\n".join(f"{marks[ch.kind]} {ch.path}" for ch in changes) or "(no differences)",
    )


@click.command("image-stats")
@click.argument("name")
@pass_ctx
def image_stats_cmd(c: Ctx, name: str) -> None:
    """Logical, unique and stored bytes of image NAME."""
    with c.open() as repo:
        s = browse.image_stats(repo, browse.open_image(repo, name))
    c.emit(
        s,
        f"{name}: {s['layers']} layer(s), {s['logical_bytes']} bytes of layer tars "
        f"({s['compressed_bytes']} compressed), {s['unique_bytes']} bytes in "
        f"{s['blobs']} blobs, {s['stored_bytes']} stored"
        + "".join(
            f"\n  {d['digest'][:19]}  {d['outcome']}"
            + (f" by {d['reproduced_by']}" if d["reproduced_by"] else "")
            + (f" ({d['kept_stored_bytes']} bytes kept)" if d["outcome"] == "kept" else "")
            for d in s["layer_details"]
        ),
    )
