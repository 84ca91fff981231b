"""common: what every wing may use — the user-error type and how commands end on one (`errors`), per-rank logging
(`logs`), and fault injection for the resilience tests (`faults`). May import nothing from cpt."""
