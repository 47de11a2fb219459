"""Inference: from a normalised image to maps (prepared net, precision, backends) and maps to labels."""
