# llt-report: memory over training, one line per run. Reproduce inside this folder: gnuplot memory.gp
set encoding utf8
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
  set terminal pngcairo size 1000,800 noenhanced font ",10"
} else {
  set terminal png size 1000,800 noenhanced
}
set output "memory.png"
set grid
set multiplot layout 2,1 title "Memory during training (memory.jsonl)"
set key outside right top
set xlabel "time since training started (s)"
set ylabel "allocated (MB)"
plot "memory.dat" index 0 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#1f77b4" pointtype 1 dashtype 1 title "ga-off.mp-off.lora-off.ckpt-block", \
     "memory.dat" index 1 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#ff7f0e" pointtype 2 dashtype 1 title "ga-off.mp-off.lora-off.ckpt-none", \
     "memory.dat" index 2 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#2ca02c" pointtype 3 dashtype 1 title "ga-off.mp-off.lora-on.ckpt-block", \
     "memory.dat" index 3 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#d62728" pointtype 4 dashtype 1 title "ga-off.mp-off.lora-on.ckpt-none", \
     "memory.dat" index 4 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#9467bd" pointtype 5 dashtype 1 title "ga-off.mp-on.lora-off.ckpt-block", \
     "memory.dat" index 5 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#8c564b" pointtype 6 dashtype 1 title "ga-off.mp-on.lora-off.ckpt-none", \
     "memory.dat" index 6 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#e377c2" pointtype 7 dashtype 1 title "ga-off.mp-on.lora-on.ckpt-block", \
     "memory.dat" index 7 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#7f7f7f" pointtype 8 dashtype 1 title "ga-off.mp-on.lora-on.ckpt-none", \
     "memory.dat" index 8 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#bcbd22" pointtype 1 dashtype 1 title "ga-on.mp-off.lora-off.ckpt-block", \
     "memory.dat" index 9 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#17becf" pointtype 2 dashtype 1 title "ga-on.mp-off.lora-off.ckpt-none", \
     "memory.dat" index 10 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#1f77b4" pointtype 3 dashtype 2 title "ga-on.mp-off.lora-on.ckpt-block", \
     "memory.dat" index 11 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#ff7f0e" pointtype 4 dashtype 2 title "ga-on.mp-off.lora-on.ckpt-none", \
     "memory.dat" index 12 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#2ca02c" pointtype 5 dashtype 2 title "ga-on.mp-on.lora-off.ckpt-block", \
     "memory.dat" index 13 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#d62728" pointtype 6 dashtype 2 title "ga-on.mp-on.lora-off.ckpt-none", \
     "memory.dat" index 14 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#9467bd" pointtype 7 dashtype 2 title "ga-on.mp-on.lora-on.ckpt-block", \
     "memory.dat" index 15 using 1:3 with linespoints pointsize 0.5 linecolor rgb "#8c564b" pointtype 8 dashtype 2 title "ga-on.mp-on.lora-on.ckpt-none"
set ylabel "resident set size (MB)"
plot "memory.dat" index 0 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#1f77b4" pointtype 1 dashtype 1 title "ga-off.mp-off.lora-off.ckpt-block", \
     "memory.dat" index 1 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#ff7f0e" pointtype 2 dashtype 1 title "ga-off.mp-off.lora-off.ckpt-none", \
     "memory.dat" index 2 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#2ca02c" pointtype 3 dashtype 1 title "ga-off.mp-off.lora-on.ckpt-block", \
     "memory.dat" index 3 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#d62728" pointtype 4 dashtype 1 title "ga-off.mp-off.lora-on.ckpt-none", \
     "memory.dat" index 4 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#9467bd" pointtype 5 dashtype 1 title "ga-off.mp-on.lora-off.ckpt-block", \
     "memory.dat" index 5 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#8c564b" pointtype 6 dashtype 1 title "ga-off.mp-on.lora-off.ckpt-none", \
     "memory.dat" index 6 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#e377c2" pointtype 7 dashtype 1 title "ga-off.mp-on.lora-on.ckpt-block", \
     "memory.dat" index 7 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#7f7f7f" pointtype 8 dashtype 1 title "ga-off.mp-on.lora-on.ckpt-none", \
     "memory.dat" index 8 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#bcbd22" pointtype 1 dashtype 1 title "ga-on.mp-off.lora-off.ckpt-block", \
     "memory.dat" index 9 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#17becf" pointtype 2 dashtype 1 title "ga-on.mp-off.lora-off.ckpt-none", \
     "memory.dat" index 10 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#1f77b4" pointtype 3 dashtype 2 title "ga-on.mp-off.lora-on.ckpt-block", \
     "memory.dat" index 11 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#ff7f0e" pointtype 4 dashtype 2 title "ga-on.mp-off.lora-on.ckpt-none", \
     "memory.dat" index 12 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#2ca02c" pointtype 5 dashtype 2 title "ga-on.mp-on.lora-off.ckpt-block", \
     "memory.dat" index 13 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#d62728" pointtype 6 dashtype 2 title "ga-on.mp-on.lora-off.ckpt-none", \
     "memory.dat" index 14 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#9467bd" pointtype 7 dashtype 2 title "ga-on.mp-on.lora-on.ckpt-block", \
     "memory.dat" index 15 using 1:4 with linespoints pointsize 0.5 linecolor rgb "#8c564b" pointtype 8 dashtype 2 title "ga-on.mp-on.lora-on.ckpt-none"
unset multiplot
