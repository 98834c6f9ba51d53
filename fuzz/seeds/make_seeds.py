#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into fuzz/corpus/<target>/.

Run once when a target is added (the corpus is then grown by fuzzing and minimised with
`cargo fuzz cmin`); seeds are small valid inputs plus a few near misses.
"""
import gzip
import hashlib
import io
import json
import os
import struct
import tarfile
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(target: str, name: str, data: bytes) -> None:
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def chunk_index():
    chunks = [[10, 30, hashlib.sha256(b"a").hexdigest()], [5, 7, hashlib.sha256(b"b").hexdigest()]]
    index = {
        "schemaVersion": 1,
        "mediaType": "application/vnd.gantry.chunk-index.v1+json",
        "layerDigest": digest(b"layer"),
        "layerSize": 15,
        "diffId": digest(b"tar"),
        "uncompressedSize": 37,
        "compression": {"format": "gzip", "deflate": "zlib-rs", "level": 6},
        "chunker": {"min": 16384, "avg": 65536, "max": 262144, "largeFileScale": 4},
        "chunks": chunks,
    }
    write("chunk_index", "index.json", canonical(index))
    write("chunk_index", "index.json.gz", gzip.compress(canonical(index), 9, mtime=0))
    bad = dict(index, layerSize=99)
    write("chunk_index", "sums-differ.json", canonical(bad))
    empty = dict(index, chunks=[], layerSize=0, uncompressedSize=0)
    write("chunk_index", "empty.json.gz", gzip.compress(canonical(empty), 9, mtime=0))


def manifest():
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(b"config"), "size": 7}
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(b"layer"), "size": 5}
    image = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer, dict(layer, urls=["https://cdn.example/layer"])],
        "annotations": {"org.opencontainers.image.version": "v1"},
    }
    write("manifest", "oci-manifest", b"\x00" + canonical(image))
    referrer = {
        "schemaVersion": 2,
        "artifactType": "application/vnd.gantry.chunk-index.v1+json",
        "config": dict(config, mediaType="application/vnd.oci.empty.v1+json"),
        "layers": [],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(b"m"), "size": 9},
    }
    write("manifest", "oci-referrer", b"\x01" + canonical(referrer))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(b"m"),
                "size": 9,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    write("manifest", "oci-index", b"\x02" + canonical(index))
    docker = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": dict(config, mediaType="application/vnd.docker.container.image.v1+json"),
        "layers": [dict(layer, mediaType="application/vnd.docker.image.rootfs.diff.tar.gzip")],
    }
    write("manifest", "docker-manifest", b"\x03" + canonical(docker))


def range_():
    headers = [
        (100, 8, "bytes=0-9"),
        (100, 8, "bytes=-5"),
        (100, 8, "bytes=90-"),
        (100, 8, "bytes=0-0, 10-19,-1"),
        (100, 8, "bytes=10-19,0-9,15-29,50-59,55-"),
        (100, 2, "bytes=100-"),
        (0, 1, "bytes=0-"),
        (100, 1, "bytes 5-9/100"),
    ]
    for i, (size, limit, header) in enumerate(headers):
        write("range", f"seed-{i}", struct.pack("<Q", size) + bytes([limit]) + header.encode())


def www_authenticate():
    for i, h in enumerate(
        [
            'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:game:pull,push"',
            'Bearer realm="https://auth.example/token",service="a \\"quoted\\" service"',
            "bearer realm=https://auth.example/token,scope=repository:a/b:pull",
            'Basic realm="Registry"',
            "Negotiate abc",
        ]
    ):
        write("www_authenticate", f"seed-{i}", h.encode())


def reference():
    d = digest(b"x")
    for i, s in enumerate(
        [
            "ubuntu",
            "docker.io/library/ubuntu:24.04",
            f"localhost:5000/studio/game:v1@{d}",
            f"registry.example/a/b@{d}",
            d,
            "studio/game-server__x.y",
            "/v2/studio/game/manifests/v1",
            f"/v2/studio/game/blobs/{d}",
            "/v2/studio/game/blobs/uploads/3f2c",
            "/v2/studio/game/chunks/lookup",
            "repository:studio/game:pull,push",
            "repository(plugin):a:pull registry:catalog:*",
        ]
    ):
        write("reference", f"seed-{i}", s.encode())


def delta_body():
    a, b = digest(b"a"), digest(b"b")
    write(
        "delta_body",
        "ranges",
        canonical({"ranges": [{"digest": a, "offset": 0, "length": 10}, {"digest": b, "offset": 7, "length": 3}]}),
    )
    write("delta_body", "lookup", canonical({"chunks": [a, b]}))
    write(
        "delta_body",
        "answer",
        canonical({"found": [{"chunk": a, "digest": b, "offset": 100, "length": 20}]}),
    )


def tar_bytes(build) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        build(t)
    return buf.getvalue()


def add(t, name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname, info.mtime = kind, mode, len(data), link, 0
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def build_tar():
    def tree(t):
        add(t, "bin", tarfile.DIRTYPE, mode=0o755)
        add(t, "bin/server", data=b"#!/bin/sh\necho hi\n", mode=0o755)
        add(t, "bin/run", tarfile.SYMTYPE, link="server")
        add(t, "bin/copy", tarfile.LNKTYPE, link="bin/server")
        add(t, "./assets/" + "long-name-" * 12 + ".dat", data=b"x" * 40)

    plain = tar_bytes(tree)
    write("build_tar", "tree.tar", plain)
    write("build_tar", "tree.tar.gz", gzip.compress(plain, 6, mtime=0))
    write("build_tar", "escape.tar", tar_bytes(lambda t: add(t, "a", tarfile.SYMTYPE, link="../../etc")))


def layer_zip():
    def zip_of(entries, method=zipfile.ZIP_STORED):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", method) as z:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                z.writestr(info, data)
        return buf.getvalue()

    write("layer_zip", "stored.pak", zip_of([("a.uasset", b"\x01" * 300), ("b.umap", b"\x02" * 700)]))
    write("layer_zip", "deflated.pak", zip_of([("c.txt", b"hello " * 50)], zipfile.ZIP_DEFLATED))
    write("layer_zip", "empty.pak", zip_of([]))
    write("layer_zip", "plain.bin", b"not an archive" * 10)


for make in [chunk_index, manifest, range_, www_authenticate, reference, delta_body, build_tar, layer_zip]:
    make()
