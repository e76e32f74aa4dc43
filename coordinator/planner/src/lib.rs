//! Pure planner (filled in by the rollout issue).
