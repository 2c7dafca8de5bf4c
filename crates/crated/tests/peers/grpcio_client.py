"""crated's API called by PyPI's grpcio with its default settings: gRPC's C core sends the
unix socket's path as :authority. Unary calls, and a synchronous lease delete whose collection
removes more than 16 KiB worth of names (its GC statistics must stay in a header the client
accepts). Prints "ok" when every call succeeded. Protobuf messages are encoded by hand."""

import sys

import grpc


def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7F) | 0x80])
        v >>= 7
    return out + bytes([v])


def field(number, value):
    if isinstance(value, bool):
        return varint(number << 3) + varint(int(value))
    return varint((number << 3) | 2) + varint(len(value)) + value


def main(socket, target_form):
    channel = grpc.insecure_channel(target_form + socket)
    call = lambda path: channel.unary_unary(path)
    ns = ("containerd-namespace", "default")

    version = call("/containerd.services.version.v1.Version/Version")(b"", timeout=10)
    assert b"crated" in version, version

    lease = b"grpcio-" + target_form.encode().replace(b":", b"").replace(b"/", b"")
    call("/containerd.services.leases.v1.Leases/Create")(
        field(1, lease), metadata=(ns,), timeout=10
    )
    for i in range(80):
        key = (b"k" * 300) + str(i).encode() + lease
        call("/containerd.services.snapshots.v1.Snapshots/Prepare")(
            field(1, b"native") + field(2, key),
            metadata=(ns, ("containerd-lease", lease.decode())),
            timeout=10,
        )
    _, delete = call("/containerd.services.leases.v1.Leases/Delete").with_call(
        field(1, lease) + field(2, True), metadata=(ns,), timeout=60
    )
    stats = dict(delete.initial_metadata()).get("crated-gc-stats-bin", b"")
    assert b"more" in stats, stats
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
