"""pipeline.inputs.retries: transient failures told apart from inputs that cannot be read."""
import tarfile


def test_transient_failures_are_told_apart_from_unreadable_inputs():
    import errno

    from apache_beam.io.filesystem import BeamIOError

    from pipeline.inputs.retries import is_transient

    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert is_transient(TimeoutError("read timed out"))
    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert is_transient(BeamIOError("Match operation failed", {"gs://b/x": "HttpError 503 Service Unavailable"}))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "No such file"))
    assert not is_transient(PermissionError(errno.EACCES, "denied"))
    assert not is_transient(tarfile.ReadError("unexpected end of data"))
