"""DICOM node service: receive, queue, predict, deliver. No model code here."""
