"""File formats: SCANCO inputs (ISQ, AIM, GOBJ), regions on a scan's grid, and the volume writers."""
