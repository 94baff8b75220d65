"""Host memory registered with CUDA (core/host_memory.py), with a fake driver: which frames take the
in-place upload, and that unregistering waits for the last copy from a range."""
from __future__ import annotations

import numpy as np

from delen_ros.core.frame_ring import FrameRing
from delen_ros.core.host_memory import HostMemory, pinnable


class FakeDriver:
    def __init__(self, refuse: bool = False):
        self.registered: dict[int, int] = {}
        self.refuse = refuse

    def register(self, address: int, nbytes: int) -> bool:
        if self.refuse:
            return False
        self.registered[address] = nbytes
        return True

    def unregister(self, address: int) -> bool:
        return self.registered.pop(address, None) is not None


class FakeEvent:
    def __init__(self, log: list):
        self.log = log

    def synchronize(self) -> None:
        self.log.append('synchronized')


def _memory(driver: FakeDriver) -> HostMemory:
    return HostMemory((driver.register, driver.unregister))


def _address(a: np.ndarray) -> int:
    return a.__array_interface__['data'][0]


def test_only_frames_wholly_inside_a_registered_range_are_copied_in_place():
    driver, block = FakeDriver(), np.zeros(1000, np.uint8)
    memory = _memory(driver)
    assert memory.copy_from(block[:10], lambda: ('copied', None)) is None   # nothing registered yet
    assert memory.register(_address(block[100:]), 500)                      # bytes 100..599
    assert len(memory) == 1 and driver.registered == {_address(block[100:]): 500}
    launched = []

    def launch():
        launched.append(1)
        return 'copied', None
    assert memory.copy_from(block[100:600], launch) == 'copied'              # exactly the range
    assert memory.copy_from(block[200:300].reshape(10, 10), launch) == 'copied'
    assert memory.copy_from(block[99:200], launch) is None                    # starts before it
    assert memory.copy_from(block[500:601], launch) is None                   # runs past its end
    assert memory.copy_from(block[700:800], launch) is None                   # after it
    assert len(launched) == 2, 'nothing is launched for a frame outside the range'
    assert memory.register(_address(block[100:]), 500), 'registering twice is harmless'
    assert len(driver.registered) == 1


def test_unregistering_waits_for_the_last_copy_then_frames_are_staged_again():
    driver, block, log = FakeDriver(), np.zeros(1000, np.uint8), []
    memory = _memory(driver)
    start = _address(block)
    memory.register(start, block.nbytes)
    memory.copy_from(block[:10], lambda: ('first', FakeEvent(log)))
    memory.copy_from(block[10:20], lambda: ('second', FakeEvent(log)))
    memory.unregister(start)
    assert log == ['synchronized'], 'the last copy is waited for, once (copies finish in order on one stream)'
    assert driver.registered == {} and len(memory) == 0
    assert memory.copy_from(block[:10], lambda: ('late', None)) is None
    memory.unregister(start)                                                  # again: a no-op
    memory.unregister(12345)                                                  # never registered: a no-op


def test_a_refused_registration_changes_nothing():
    driver, block = FakeDriver(refuse=True), np.zeros(100, np.uint8)
    memory = _memory(driver)
    assert not memory.register(_address(block), 100)
    assert not memory.register(_address(block), 0)
    assert len(memory) == 0 and memory.failed == 1
    assert memory.copy_from(block, lambda: ('copied', None)) is None


def test_a_rings_mapping_is_reported_and_still_unmaps_on_close(tmp_path):
    writer = FrameRing.create(3, 4096, directory=str(tmp_path))
    reader = FrameRing.attach(writer.path)
    slot = writer.write(b'\x07' * 100)
    view = np.frombuffer(reader.view(slot, 100), np.uint8)
    assert reader.map_bytes >= 3 * 4096 and reader.address <= _address(view) < reader.address + reader.map_bytes
    assert _address(view) + view.nbytes <= reader.address + reader.map_bytes
    del view
    reader.close()
    assert reader._mm.closed, 'the address lookup left no export behind that would keep the mapping'
    writer.close(unlink=True)


def test_only_tmpfs_files_are_pinnable(tmp_path):
    import os
    if os.path.isdir('/dev/shm'):
        assert pinnable('/dev/shm/delen-frames-x') == (os.system('grep -q " /dev/shm tmpfs " /proc/self/mounts') == 0)
    assert not pinnable('/proc/self/status'), 'procfs is no tmpfs'


def test_several_frames_are_copied_by_one_launch_only_if_all_are_registered():
    driver, block = FakeDriver(), np.zeros(1000, np.uint8)
    memory = _memory(driver)
    assert not memory.holds(block[:10])
    memory.register(_address(block[0:]), 300)     # bytes 0..299
    memory.register(_address(block[500:]), 300)   # bytes 500..799
    assert memory.holds(block[10:20]) and memory.holds(block[500:800]) and not memory.holds(block[290:310])
    log, event = [], FakeEvent([])

    def launch():
        log.append('launched')
        return 'batch', event
    assert memory.copy_all_from([block[0:100], block[600:700]], launch) == 'batch'   # two ranges, one launch
    assert memory.copy_all_from([block[0:100], block[350:360]], launch) is None      # one outside: none
    assert memory.copy_all_from([], launch) is None
    assert log == ['launched']
    memory.unregister(_address(block[500:]))       # waits for the launch's event, which covers that range too
    assert event.log == ['synchronized']


def test_raw_copies_only_on_the_runtime_torch_loaded(monkeypatch):
    """``raw_copy_api`` is off when asked, and off where no CUDA runtime is loaded in the process (the
    uploads then take torch copies)."""
    from delen_ros.core import host_memory
    monkeypatch.setenv('DELEN_RAW_COPY', '0')
    assert host_memory.raw_copy_api() is None
    monkeypatch.delenv('DELEN_RAW_COPY')
    monkeypatch.setattr(host_memory, '_loaded_cudart', lambda: None)
    assert host_memory.raw_copy_api() is None
