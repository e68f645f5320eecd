"""Tar shards built member by member, for the tar reader's and the listing's tests."""
import io
import tarfile


def write_tar(path, members):
    """A plain tar of (member name, bytes); a name may repeat, as tar allows."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
