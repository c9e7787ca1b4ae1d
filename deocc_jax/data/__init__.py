"""The record format shared by data_prep (writer) and the training input (reader)."""
