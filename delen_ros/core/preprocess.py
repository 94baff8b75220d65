"""Camera images -> the normalised input batch a model takes.

Images are uint8 ``H x W x 3`` RGB or ``H x W`` (or ``H x W x 1``) grey, of any size. Each is
converted to the model's channels (ITU-R 601 luma for RGB -> grey, as ``cv2.cvtColor``; grey -> RGB
repeats the channel), resized to ``info.input_size`` with ``cv2.INTER_AREA`` (averages the source
pixels, so shrinking a 640x480 frame does not alias), then normalised ``(pixel - mean) / std``.

Images of the same shape are stacked and converted, normalised and copied as one array; only the
resize runs per image (see ``_resize``).
"""
from __future__ import annotations

import collections
import os
import threading
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch

from .area_resize import area_resize, growth_factors
from .host_memory import HOST_MEMORY, raw_copy_api

if TYPE_CHECKING:
    from .multi_exit import ModelInfo

__all__ = ['preprocess', 'check_image', 'normalisation', 'normalise', 'DevicePreprocessor']

def check_image(image: object, *, index: int = 0) -> np.ndarray:
    """Validate one input image; returns it as ``H x W`` or ``H x W x 3`` uint8, else ``ValueError``."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f'image {index}: expected a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ValueError(f'image {index}: expected dtype uint8, got {image.dtype}')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f'image {index}: expected H x W grey or H x W x 3 RGB, got shape {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f'image {index}: empty image, shape {image.shape}')
    return image


def _convert_channels(stack: np.ndarray, in_channels: int) -> np.ndarray:
    """``N x H x W [x 3]`` uint8 -> ``N x H x W x C`` with ``C = in_channels``."""
    if stack.ndim == 4 and in_channels == 1:
        n, h, w, _ = stack.shape
        # One cvtColor call for the whole stack: rows of all images laid end to end.
        grey = cv2.cvtColor(np.ascontiguousarray(stack).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY)
        return grey.reshape(n, h, w, 1)
    if stack.ndim == 3:
        stack = stack[..., None]
    return stack  # grey -> RGB is repeated after resizing (3x less to resize)


def _resize(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``N x H x W x C`` -> ``N x h x w x C`` with INTER_AREA, one cv2 call per image.

    One call per image (not several images packed as channels): OpenCV's area resize takes at most
    4 channels at non-integer ratios and rounds packed channels differently at integer ones, and a
    frame must come out the same whatever batch it arrives in.
    """
    n, h, w, c = stack.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return stack
    out = np.empty((n, out_h, out_w, c), np.uint8)
    for i in range(n):
        out[i] = cv2.resize(stack[i], (out_w, out_h), interpolation=cv2.INTER_AREA).reshape(out_h, out_w, c)
    return out


def preprocess(images: Sequence[np.ndarray], info: 'ModelInfo', *,
               device: str | torch.device | None = None) -> torch.Tensor:
    """The normalised float32 batch ``N x C x H x W`` for a model described by ``info``.

    :param images: uint8 ``H x W x 3`` RGB or ``H x W`` grey arrays, any sizes (a list, not one
        stacked array: a 3-D stack would be ambiguous).
    :param info: gives ``input_size`` (height, width), ``in_channels``, ``mean`` and ``std``.
    :param device: where to put the result; ``None``: CPU.
    :raises ValueError: for a bad image (dtype, dimensions, channels, zero size), showing it.
    """
    if isinstance(images, np.ndarray):
        raise ValueError(f'pass a sequence of images, not one array of shape {images.shape} '
                         '(e.g. [image] or list(stack))')
    images = [check_image(im, index=i) for i, im in enumerate(images)]
    c = info.in_channels
    h, w = info.input_size
    batch = np.empty((len(images), h, w, c), np.uint8)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    for indices in groups.values():
        stack = np.stack([images[i] for i in indices]) if len(indices) > 1 else images[indices[0]][None]
        stack = _resize(_convert_channels(stack, c), (h, w))
        batch[indices] = stack if stack.shape[-1] == c else np.repeat(stack, c, axis=-1)
    x = torch.from_numpy(batch).to(device=device).permute(0, 3, 1, 2).float()
    mean, inv_std = normalisation(info, x.device)
    return ((x - mean) * inv_std).contiguous()


def normalisation(info: ModelInfo, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's ``(mean, 1 / std)`` per channel (``ModelInfo``, 0..255 units) as ``1 x C x 1 x 1``
    float32 tensors on ``device``: ``(pixels - mean) * inv_std`` is its input."""
    c = info.in_channels
    return (torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, c, 1, 1),
            torch.tensor([1.0 / s for s in info.std], dtype=torch.float32, device=device).view(1, c, 1, 1))


def normalise(x: torch.Tensor, inv_std: torch.Tensor, shift: torch.Tensor, *, dtype: torch.dtype,
              memory_format: torch.memory_format = torch.contiguous_format,
              grow: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """``(x - mean) * inv_std`` of ``N x C x H x W`` pixels (uint8, or float from a resize) as
    ``x * inv_std + shift`` (``shift = -mean * inv_std``), written straight into a new ``dtype``
    tensor of ``memory_format``: one kernel where a float copy, two arithmetic passes and a cast were
    four eager launches. Computed in float32, rounded once. (On an H200 at batch 1 the saving was
    within the run-to-run spread: ``benchmarks/h200/cifar10_committee/session27/lone_ab.txt``.)

    ``grow``: integer factors ``(fy, fx)`` by which each pixel is replicated on the way
    (:func:`~delen_ros.core.area_resize.growth_factors`: ``INTER_AREA``'s growth at whole factors), in the
    same kernel: the output, seen as ``N x C x H x fy x W x fx``, takes the input broadcast over ``fy``
    and ``fx``. A float copy and a resize kernel fewer for a small camera's frames."""
    n, c, h, w = x.shape
    fy, fx = grow
    out = torch.empty((n, c, h * fy, w * fx), dtype=dtype, device=x.device, memory_format=memory_format)
    if (fy, fx) == (1, 1):
        return torch.addcmul(shift, x, inv_std, out=out)
    per_channel = (1, c, 1, 1, 1, 1)
    torch.addcmul(shift.view(per_channel), x[:, :, :, None, :, None].expand(n, c, h, fy, w, fx),
                  inv_std.view(per_channel), out=out.view(n, c, h, fy, w, fx))
    return out


_MAX_STAGING_SHAPES = 8
_FRAME_BUFFERS = 16   # pinned one-frame buffers per shape for upload() at most, reused in turn
_IN_PLACE_MAX = 256   # uploads from registered memory whose host frames are held until done, at most


class DevicePreprocessor:
    """:func:`preprocess` on the accelerator: raw uint8 frames in, the model's input batch out.

    Frames of one shape are staged in a reused pinned host buffer (the one CPU copy, straight from
    the message's bytes), uploaded with a ``non_blocking`` copy on a stream of their own, then
    converted, resized (:func:`~delen_ros.core.area_resize.area_resize`: the CPU path's ``cv2.INTER_AREA``),
    normalised and cast on the current stream, which waits for the upload by a CUDA event: no
    device-wide synchronisation. The result is in ``dtype`` and ``memory_format``, ready for the
    runner. A staging buffer is reused only after its previous upload's event has completed.

    :meth:`upload` starts one frame's upload ahead, from the thread that receives it: the engine's
    worker then only converts frames already on the device, and the camera's buffer is free again
    as soon as its bytes are staged.
    """

    #: grow by whole factors inside the normalising kernel (``normalise``'s ``grow``); false: a resize
    #: kernel first, as before session 47 (DELEN_FOLD_GROWTH=0, an A/B)
    fold_growth = os.environ.get('DELEN_FOLD_GROWTH', '1') != '0'

    def __init__(self, info: 'ModelInfo', device: torch.device, *, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.contiguous_format):
        if torch.device(device).type != 'cuda':
            raise ValueError(f'DevicePreprocessor needs a CUDA device, got {device}')
        self.info = info
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory_format = memory_format
        self._stream = torch.cuda.Stream(device=self.device)
        self._staging: dict[tuple[int, ...], tuple[torch.Tensor, torch.cuda.Event | None]] = {}
        mean, self._inv_std = normalisation(info, self.device)
        self._shift = -mean * self._inv_std   # normalise(): x * inv_std + shift
        self._luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # upload(): its own stream and pinned frame buffers, per shape, reused in turn
        self._upload_stream = torch.cuda.Stream(device=self.device)
        self._upload_lock = threading.Lock()
        self._frame_buffers: dict[tuple[int, ...], collections.deque] = {}
        self._in_place: collections.deque = collections.deque()   # (frame in registered memory, copy done)
        self._raw_copy = raw_copy_api()   # after the tensors above: torch has loaded its CUDA runtime

    def _stage(self, stack: Sequence[np.ndarray]) -> torch.Tensor:
        """Copy same-shaped frames into a pinned buffer and start their upload; the device tensor."""
        shape = stack[0].shape
        buffer, done = self._staging.get(shape, (None, None))
        if buffer is None or buffer.shape[0] < len(stack):
            capacity = 1 << (len(stack) - 1).bit_length()
            buffer, done = torch.empty((capacity, *shape), dtype=torch.uint8, pin_memory=True), None
        if done is not None:
            done.synchronize()   # this buffer's last upload has left it
        self._staging.pop(shape, None)
        while len(self._staging) >= _MAX_STAGING_SHAPES:   # bounded, whatever sizes cameras send
            _, (_, old) = self._staging.popitem()
            if old is not None:
                old.synchronize()
        host = buffer.numpy()
        for i, image in enumerate(stack):
            np.copyto(host[i], image)     # strided rows (a message view) are fine
        with torch.cuda.stream(self._stream):
            upload = buffer[:len(stack)].to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._staging[shape] = (buffer, event)
        torch.cuda.current_stream(self.device).wait_event(event)
        upload.record_stream(torch.cuda.current_stream(self.device))
        return upload

    def _convert(self, upload: torch.Tensor) -> torch.Tensor:
        """``N x H x W [x 3]`` uint8 on the device -> the normalised ``N x C x h x w`` batch in ``dtype``
        and ``memory_format``. Frames at the model's size and channels stay uint8 up to the one
        kernel that normalises them; the others go through float32 to convert and resize."""
        x = upload.unsqueeze(-1) if upload.dim() == 3 else upload
        x = x.permute(0, 3, 1, 2)
        c = self.info.in_channels
        if c == 1 and x.shape[1] == 3:
            x = (x.float() * self._luma).sum(dim=1, keepdim=True).round_()   # cvtColor gives whole levels
        grow = growth_factors(tuple(x.shape[-2:]), self.info.input_size) if self.fold_growth else None
        if grow is None:
            x = area_resize(x, self.info.input_size)
        if c == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return normalise(x, self._inv_std, self._shift, dtype=self.dtype, memory_format=self.memory_format,
                         grow=grow or (1, 1))

    def upload(self, image: np.ndarray) -> torch.Tensor:
        """Start copying one frame to the device; returns its uint8 tensor there, for ``__call__``.

        Thread-safe. The image is copied into a pinned buffer before this returns (its memory may
        be reused at once); the upload runs on a stream of its own, which ``__call__`` waits for.
        An image in host memory registered with CUDA (:mod:`~delen_ros.core.host_memory`: a frame
        ring) is uploaded from where it is, and held until the copy is done.
        """
        image = check_image(image)
        frame = self._from_registered(image)
        if frame is not None:
            return frame
        # The lock guards the buffers' bookkeeping only, never a copy or a launch: held across them,
        # it kept the worker (then waiting for it in _uploaded) behind this thread's frames.
        with self._upload_lock:
            self._drain_in_place()
            ring = self._frame_buffers.get(image.shape)
            if ring is None:
                while len(self._frame_buffers) >= _MAX_STAGING_SHAPES:   # bounded, whatever sizes come
                    for _, done in self._frame_buffers.pop(next(iter(self._frame_buffers))):
                        if done is not None:
                            done.synchronize()
                ring = self._frame_buffers[image.shape] = collections.deque()
            # Grown one buffer at a time, only while every buffer still has an upload in flight:
            # pinning all of them at a size's first frame stalled this (the receiving) thread for
            # tens of ms, and every camera's frames with it.
            if ring and (ring[0][1] is None or ring[0][1].query()):
                buffer, done = ring.popleft()
            elif len(ring) < _FRAME_BUFFERS:
                buffer, done = None, None
            else:
                buffer, done = ring.popleft()
        if buffer is None:
            buffer = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
        elif done is not None:
            done.synchronize()   # a burst: wait for the oldest upload to leave its buffer
        np.copyto(buffer.numpy(), image)   # releases the GIL: the worker runs meanwhile
        frame, done = self._launch(buffer)
        with self._upload_lock:
            ring.append((buffer, done))
        return frame

    def upload_many(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """:meth:`upload` for several frames at once (a frame reader's burst): same-shaped frames in
        registered host memory go as one device tensor, copied from where they are behind one event, and
        each is a row of it; the others go one at a time."""
        images = [check_image(image) for image in images]
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            if self._registered(image):
                groups.setdefault(image.shape, []).append(i)
        for rows in groups.values():
            if len(rows) > 1:
                launched = self._stack_in_place([images[i] for i in rows])
                if launched is not None:   # else one of them was unregistered meanwhile: one at a time below
                    for row, i in enumerate(rows):
                        out[i] = launched[0][row]
        return [frame if frame is not None else self.upload(images[i]) for i, frame in enumerate(out)]

    def _from_registered(self, image: np.ndarray) -> torch.Tensor | None:
        """``image``'s upload started from where it is, if it lies in registered host memory; else None."""
        if not (image.flags.c_contiguous and image.flags.writeable):
            return None
        return HOST_MEMORY.copy_from(image, lambda: self._upload_in_place((image,), image.shape))

    @staticmethod
    def _registered(image: np.ndarray) -> bool:
        return image.flags.c_contiguous and image.flags.writeable and HOST_MEMORY.holds(image)

    def _launch(self, host: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Queue ``host``'s copy to the device on the upload stream; the device tensor, and an event
        that completes when the copy is done."""
        with torch.cuda.stream(self._upload_stream):
            frame = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._upload_stream)
        return frame, done

    def _upload_in_place(self, images: Sequence[np.ndarray], shape: tuple[int, ...]
                         ) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Start copying same-shaped ``images``, in registered host memory, straight into one new
        device tensor of ``shape`` (no staging copy); the tensor, and an event that completes when
        the copies are done. Each image -- and with it the shared-memory slot it views -- is kept
        until then, so that the slot is not written again meanwhile."""
        with self._upload_lock:
            self._drain_in_place()
            excess = len(self._in_place) + len(images) - _IN_PLACE_MAX
            oldest = [self._in_place.popleft() for _ in range(min(max(excess, 0), len(self._in_place)))]
        for _, done in oldest:
            done.synchronize()   # their slots are let go only once their copies are done
        del oldest
        nbytes = images[0].nbytes
        with torch.cuda.device(self.device), torch.cuda.stream(self._upload_stream):
            out = torch.empty(shape, dtype=torch.uint8, device=self.device)
            stream, base = self._upload_stream.cuda_stream, out.data_ptr()
            for i, image in enumerate(images):
                # one cudaMemcpyAsync (upload_paths.py, H200 host: a 32-frame batch costs this thread
                # 14 µs a frame, 25 with a torch copy per frame)
                if self._raw_copy is None or not self._raw_copy(base + i * nbytes,
                                                                image.__array_interface__['data'][0], nbytes, stream):
                    out.view(len(images), -1)[i].copy_(torch.from_numpy(image).view(-1), non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._upload_stream)
        with self._upload_lock:
            self._in_place.extend((image, done) for image in images)
        return out, done

    def _drain_in_place(self) -> None:
        """Let go of frames whose in-place copy is done: their slots go back to the receivers (in
        order of launch, on one stream). Under ``_upload_lock``. A batch's frames share one event:
        it is asked once."""
        done_seen = None
        while self._in_place:
            done = self._in_place[0][1]
            if done is not done_seen:
                if not done.query():
                    return
                done_seen = done
            self._in_place.popleft()

    def _uploaded(self, stack: Sequence[torch.Tensor]) -> torch.Tensor:
        """Frames from :meth:`upload` as one ``N x H x W [x 3]`` batch on the current stream."""
        current = torch.cuda.current_stream(self.device)
        # The stack's copies were queued before their frames were (upload returned first): an event
        # recorded now on the upload stream comes after all of them.
        ready = torch.cuda.Event()
        ready.record(self._upload_stream)
        current.wait_event(ready)
        for frame in stack:   # allocated on the upload stream, read on this one
            frame.record_stream(current)
        return stack[0].unsqueeze(0) if len(stack) == 1 else torch.stack(list(stack))

    def _stack_in_place(self, stack: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.cuda.Event] | None:
        """Same-shaped frames in registered memory copied from where they are into one new device tensor on
        the upload stream: the tensor and the copies' event, or ``None`` (nothing copied) if one of them is
        no longer registered."""
        def launch():
            batch, done = self._upload_in_place(stack, (len(stack), *stack[0].shape))
            return (batch, done), done

        return HOST_MEMORY.copy_all_from(stack, launch)

    def _batch_in_place(self, stack: Sequence[np.ndarray]) -> torch.Tensor | None:
        """Same-shaped host frames in registered memory as one batch on the current stream, copied
        from where they are; ``None`` (nothing copied) if one of them is no longer registered."""
        launched = self._stack_in_place(stack)
        if launched is None:
            return None
        batch, done = launched
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        batch.record_stream(current)   # allocated on the upload stream, read on this one
        return batch

    def __call__(self, images: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """The model's input batch for ``images`` (uint8 RGB or grey, any sizes: host arrays, or
        device tensors from :meth:`upload`), on the device. Host frames in registered memory (the
        receivers' rings: frames not uploaded ahead) are copied from where they are, the others
        staged, by shape."""
        images = [im if isinstance(im, torch.Tensor) else check_image(im, index=i) for i, im in enumerate(images)]
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, im in enumerate(images):
            kind = 'device' if isinstance(im, torch.Tensor) else 'registered' if self._registered(im) else 'host'
            groups.setdefault((kind, *im.shape), []).append(i)
        parts, order = [], []
        for (kind, *_), indices in groups.items():
            stack = [images[i] for i in indices]
            if kind == 'device':
                batch = self._uploaded(stack)
            else:
                batch = self._batch_in_place(stack) if kind == 'registered' else None
                if batch is None:
                    batch = self._stage(stack)
            parts.append(self._convert(batch))
            order.extend(indices)
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        if order != sorted(order):
            x = x[torch.tensor([order.index(i) for i in range(len(order))], device=self.device)]
        return x.to(dtype=self.dtype, memory_format=self.memory_format)
