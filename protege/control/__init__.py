"""The real-time control package shared by deployment and recording: the control loop, its
safety filter and smooth stop, the action schedulers, the inference workers, the operator's stop
keys and the cycle log (ARCHITECTURE.md, "One control cycle")."""
