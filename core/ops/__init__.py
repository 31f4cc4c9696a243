"""Operations: what the operator sees and does: status snapshots, the doctor, control, metrics, events."""
