"""Loss terms of CPTrans and ROMA (SPEC §4)."""
