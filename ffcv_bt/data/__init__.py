"""Data: conversion of image folders to .beton files, the manifest, the label subsets, and
the FFCV loaders (two-view pretraining loader, evaluation loader).

Imports: ``ffcv_bt.augment``, ``ffcv_bt.errors``, ``ffcv_bt.atomic_files``; nothing from
method, train, evaluation or reporting.
"""
