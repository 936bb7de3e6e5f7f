"""``pipeline.common.Background``: reads ahead and writes behind the model, in order, on one
thread beside a CPU model and on two beside a GPU; errors reach the model's thread."""

from __future__ import annotations

import threading
import time

import pytest

from era5latent.pipeline.common import Background


def test_reads_come_back_in_order_at_most_depth_ahead_of_the_consumer() -> None:
    started: list[int] = []

    def read(k: int) -> int:
        started.append(k)
        return k * k

    with Background(depth=2) as io:
        got = []
        for k, v in io.read_ahead(read, range(6)):
            time.sleep(0.02)  # the consumer is slower than the reads
            got.append((k, v, len(started)))
    assert [(k, v) for k, v, _ in got] == [(k, k * k) for k in range(6)]
    # when item k is handed out, reads k+1 and k+2 have been asked for, no more
    assert all(n <= min(k + 3, 6) for k, _, n in got)


@pytest.mark.parametrize("shared", [True, False])
def test_reads_and_writes_share_one_thread_beside_a_cpu_model_and_not_beside_a_gpu(
        shared: bool) -> None:
    threads: dict[str, set[str]] = {"read": set(), "write": set()}

    def read(k: int) -> int:
        threads["read"].add(threading.current_thread().name)
        return k

    with Background(shared=shared) as io:
        for k, _ in io.read_ahead(read, range(4)):
            io.submit(lambda: threads["write"].add(threading.current_thread().name))
    assert len(threads["read"]) == len(threads["write"]) == 1
    assert (threads["read"] == threads["write"]) is shared
    assert threading.current_thread().name not in threads["read"] | threads["write"]


def test_the_first_reads_run_before_a_write_submitted_after_them() -> None:
    """encode queues the lay-out after its first reads, so that the first chunk (already in
    memory) does not wait for the store to be created."""
    order: list[str] = []
    with Background(shared=True) as io:
        chunks = io.read_ahead(lambda k: order.append(f"read {k}"), range(3))
        io.submit(order.append, "lay out")
        for _ in chunks:
            pass
    assert order == ["read 0", "read 1", "lay out", "read 2"]


def test_a_failed_read_reaches_the_consumer_and_no_later_read_runs() -> None:
    started: list[int] = []
    release = threading.Event()

    def read(k: int) -> int:
        started.append(k)
        if k == 2:
            raise OSError(5, "Input/output error")
        if k > 2:  # a read after the failed one waits until the consumer has seen 0 and 1
            release.wait(5)
        return k

    got: list[int] = []
    with pytest.raises(OSError, match="Input/output"):
        with Background(depth=2) as io:
            for k, _ in io.read_ahead(read, range(10)):
                got.append(k)
                if k == 1:
                    release.set()
    assert got == [0, 1]
    assert max(started) <= 3  # read 3 was asked for when 1 was handed out; none after the error


def test_a_consumer_that_stops_early_leaves_no_read_running_and_does_not_hang() -> None:
    started: list[int] = []
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with Background(depth=2) as io:
            for k, _ in io.read_ahead(lambda k: started.append(k) or time.sleep(0.05), range(50)):
                raise KeyboardInterrupt
    assert max(started) <= 2 and time.perf_counter() - t0 < 2


def test_writes_run_in_order_and_none_after_one_that_failed() -> None:
    ran: list[int] = []

    def fail() -> None:
        raise OSError(28, "No space left on device")

    io = Background(depth=4)
    io.submit(ran.append, 1)
    io.submit(fail)
    io.submit(ran.append, 2)
    with pytest.raises(OSError, match="No space"):
        io.drain()
    assert ran == [1]


def test_one_thread_only_beside_a_cpu_model_with_local_files() -> None:
    import torch

    from era5latent.pipeline.common import one_io_thread

    cpu = torch.device("cpu")
    assert one_io_thread(cpu, "/data/era5.zarr", "out.zarr")
    assert not one_io_thread(cpu, "gs://weatherbench2/era5.zarr", "out.zarr")
    assert not one_io_thread(cpu, "/data/era5.zarr", "s3://bucket/latent.zarr")
    assert not one_io_thread(torch.device("cuda"), "/data/era5.zarr", "out.zarr")
