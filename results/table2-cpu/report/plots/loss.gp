# llt-report: loss per optimizer step, one line per run. Reproduce inside this folder: gnuplot loss.gp
set encoding utf8
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
  set terminal pngcairo size 1000,600 noenhanced font ",10"
} else {
  set terminal png size 1000,600 noenhanced
}
set output "loss.png"
set grid
set title "Training loss (metrics.jsonl)"
set xlabel "optimizer step"
set ylabel "loss (mean over label tokens)"
set key outside right top
plot "loss.dat" index 0 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#1f77b4" pointtype 1 dashtype 1 title "ga-off.mp-off.lora-off.ckpt-block", \
     "loss.dat" index 1 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#ff7f0e" pointtype 2 dashtype 1 title "ga-off.mp-off.lora-off.ckpt-none", \
     "loss.dat" index 2 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#2ca02c" pointtype 3 dashtype 1 title "ga-off.mp-off.lora-on.ckpt-block", \
     "loss.dat" index 3 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#d62728" pointtype 4 dashtype 1 title "ga-off.mp-off.lora-on.ckpt-none", \
     "loss.dat" index 4 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#9467bd" pointtype 5 dashtype 1 title "ga-off.mp-on.lora-off.ckpt-block", \
     "loss.dat" index 5 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#8c564b" pointtype 6 dashtype 1 title "ga-off.mp-on.lora-off.ckpt-none", \
     "loss.dat" index 6 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#e377c2" pointtype 7 dashtype 1 title "ga-off.mp-on.lora-on.ckpt-block", \
     "loss.dat" index 7 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#7f7f7f" pointtype 8 dashtype 1 title "ga-off.mp-on.lora-on.ckpt-none", \
     "loss.dat" index 8 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#bcbd22" pointtype 1 dashtype 1 title "ga-on.mp-off.lora-off.ckpt-block", \
     "loss.dat" index 9 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#17becf" pointtype 2 dashtype 1 title "ga-on.mp-off.lora-off.ckpt-none", \
     "loss.dat" index 10 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#1f77b4" pointtype 3 dashtype 2 title "ga-on.mp-off.lora-on.ckpt-block", \
     "loss.dat" index 11 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#ff7f0e" pointtype 4 dashtype 2 title "ga-on.mp-off.lora-on.ckpt-none", \
     "loss.dat" index 12 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#2ca02c" pointtype 5 dashtype 2 title "ga-on.mp-on.lora-off.ckpt-block", \
     "loss.dat" index 13 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#d62728" pointtype 6 dashtype 2 title "ga-on.mp-on.lora-off.ckpt-none", \
     "loss.dat" index 14 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#9467bd" pointtype 7 dashtype 2 title "ga-on.mp-on.lora-on.ckpt-block", \
     "loss.dat" index 15 using 1:2 with linespoints pointsize 0.6 linecolor rgb "#8c564b" pointtype 8 dashtype 2 title "ga-on.mp-on.lora-on.ckpt-none"
