"""Policy inference for the control loop: a worker thread that overlaps execution, and the
runner that turns an observation window of store keys into an action chunk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.dataset import select
from ..policies.base import Policy
from ..policies.tensors import obs_to_torch


class PolicyRunner:
    """``runner(window) -> chunk``: a window {store key: (To, ...)} (the observation assembly's
    output) mapped by the task's observation spec to the policy's keys, a batch of one, and the
    policy's chunk (Ta, Da) float64 in the store's action units.

    Args:
        policy: a trained :class:`~protege.policies.base.Policy` (on its device, in eval mode).
        obs_spec: the task's observation spec (policy key -> {source, type, slice}).
    """

    def __init__(self, policy: Policy, obs_spec: Mapping[str, Mapping[str, Any]]):
        self.policy, self.obs_spec = policy.eval(), {k: dict(v) for k, v in obs_spec.items()}
        self.image_keys = [k for k, s in self.obs_spec.items() if s.get("type") == "rgb"]
        self.store_keys = sorted({s["source"] for s in self.obs_spec.values()})

    @torch.no_grad()
    def __call__(self, window: Mapping[str, np.ndarray]) -> np.ndarray:
        obs = {k: select(window[s["source"]], s, batch_dims=1)[None] for k, s in self.obs_spec.items()}
        chunk = self.policy.predict_action(obs_to_torch(obs, self.image_keys, self.policy.device))
        return chunk[0].float().cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class InferenceResult:
    """A chunk (Ta, Da) predicted from the observation at ``t_obs``; inference ran from
    ``t_start`` to ``t_end`` (s on the loop's clock)."""

    chunk: np.ndarray
    t_obs: float
    t_start: float
    t_end: float

    @property
    def latency(self) -> float:
        """Observation to action chunk, s."""
        return self.t_end - self.t_obs


class InferenceWorker:
    """Runs ``predict(window) -> chunk`` in a thread of its own, one request at a time, so the
    control loop keeps its rate while the policy thinks.

    Args:
        predict: the policy (e.g. a :class:`PolicyRunner`).
        now: the loop's clock, s.
        delay_s: extra latency added to every inference, s (to rehearse a slower model or computer).

    The thread is a daemon: a policy that never returns cannot keep the process alive.
    """

    def __init__(self, predict: Callable[[Mapping[str, np.ndarray]], np.ndarray], now: Callable[[], float],
                 delay_s: float = 0.0):
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self.predict, self.now, self.delay_s = predict, now, float(delay_s)
        self._cond = threading.Condition()
        self._request: tuple[Mapping[str, np.ndarray], float] | None = None
        self._result: InferenceResult | None = None
        self._error: BaseException | None = None
        self._busy_since: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    @property
    def busy_since(self) -> float | None:
        """When the running request was submitted (None when idle)."""
        return self._busy_since

    def submit(self, window: Mapping[str, np.ndarray], t_obs: float) -> bool:
        """Ask for a chunk from ``window`` observed at ``t_obs``; False (and nothing done) while busy."""
        with self._cond:
            if self._busy_since is not None or self._closed:
                return False
            self._busy_since = self.now()
            self._request = (window, float(t_obs))
            self._cond.notify_all()
            return True

    def poll(self) -> InferenceResult | None:
        """The finished result (once), or None.

        Raises:
            RuntimeError: the policy raised (its exception is the cause).
        """
        with self._cond:
            if self._error is not None:
                err, self._error = self._error, None
                raise RuntimeError(f"policy inference failed: {err!r}") from err
            result, self._result = self._result, None
            return result

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._request is not None or self._closed)
                if self._closed:
                    return
                window, t_obs = self._request
                self._request = None
            t_start = self.now()
            try:
                chunk = np.asarray(self.predict(window), dtype=np.float64)
                if self.delay_s:
                    time.sleep(self.delay_s)
                result, error = InferenceResult(chunk, t_obs, t_start, self.now()), None
            except BaseException as e:  # noqa: BLE001 - handed to the loop
                result, error = None, e
            with self._cond:
                self._result, self._error, self._busy_since = result, error, None

    def close(self) -> None:
        """Stop the thread after its current request (does not wait for a hanging policy)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class ActionSourceLost(RuntimeError):
    """An action source's device is gone (a teleop device unplugged, its driver stopped); the
    message names it. The control loop stops the arm smoothly (StopReason.TELEOP_DEVICE)."""


class InlineWorker:
    """:class:`InferenceWorker`'s interface, computed in the caller's thread at :meth:`submit`: for
    a teleop device, whose ``act`` takes microseconds and must see the newest observation (a
    thread would only add a cycle of latency). The result is ready for the next :meth:`poll`."""

    def __init__(self, predict: Callable[[Mapping[str, np.ndarray]], np.ndarray], now: Callable[[], float]):
        self.predict, self.now = predict, now
        self._result: InferenceResult | None = None
        self._error: BaseException | None = None
        self.busy_since = None  # never busy: submit returns with the result

    def submit(self, window: Mapping[str, np.ndarray], t_obs: float) -> bool:
        t_start = self.now()
        try:
            chunk = np.asarray(self.predict(window), dtype=np.float64)
            self._result = InferenceResult(chunk, float(t_obs), t_start, self.now())
        except Exception as e:  # noqa: BLE001 - raised by poll, as InferenceWorker does
            self._error = e
        return True

    def poll(self) -> InferenceResult | None:
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, ActionSourceLost):
                raise err
            raise RuntimeError(f"teleop device failed: {err!r}") from err
        result, self._result = self._result, None
        return result

    def close(self) -> None:
        pass
