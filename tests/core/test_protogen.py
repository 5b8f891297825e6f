"""The committed stubs must be exactly what `make proto` generates from the committed .proto."""

from services.core import protogen


def test_committed_stubs_are_fresh() -> None:
    assert protogen.stale_files() == []


def test_every_proto_has_stubs_beside_it() -> None:
    for proto in protogen.proto_files():
        stem = proto.with_suffix("")
        for suffix in protogen.GENERATED_SUFFIXES:
            assert stem.parent.joinpath(stem.name + suffix).is_file(), (proto, suffix)
