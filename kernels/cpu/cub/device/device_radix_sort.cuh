// CUB's device-wide radix sort, for the CPU build of the kernels (see ../../cuda_runtime.h).
#pragma once
#include "../../cub_host.h"
